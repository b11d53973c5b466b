"""BirdNET V2.4's spectrogram front end by FFT, outside the ONNX graph.

The converted graph computes each of BirdNET's two mel spectrograms as one dense matrix product
(frames @ (DFT-cosines @ mel filterbank)): a third of the model's multiply-adds, for a linear map whose
mel filters only read a band of the DFT bins. Here the same thing is done as BirdNET defines it:
per-window min/max normalisation to [-1, 1], frames, Hann window, the REAL part of the rFFT (BirdNET
casts its complex STFT to float, which keeps the real part, not the magnitude), the mel filterbank on
the bins it reads, square, a learnt power, and the mel axis flipped (high frequencies first). The
result feeds the rest of the graph, cut after its spectrogram (``spectrogram`` [n, 2, 96, 511]).

The parameters (Hann windows, mel filterbanks, powers, frame sizes) are taken from the converted graph
by ``make model`` and stored beside the model (``birdnet_v24_frontend.npz``); the build checks this
code against the graph's own spectrogram before it publishes them.

numpy's FFT releases the GIL, so the windows of a batch (and the two spectrograms of a window) are
spread over a small thread pool of the session's thread count.
"""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class FrontendError(ValueError):
    """The front-end parameter file is missing or not what this code expects."""


@dataclass(frozen=True)
class Spectrogram:
    frame_length: int
    hop: int
    window: np.ndarray  # float32 [frame_length] (Hann, as in the graph)
    first_bin: int  # the mel filterbank reads DFT bins first_bin .. first_bin + len(mel) - 1 only
    mel: np.ndarray  # float32 [bins read, bands]
    power: float  # applied to the squared mel energies


@dataclass(frozen=True)
class Frontend:
    specs: tuple[Spectrogram, ...]
    frames: int
    eps: float  # added to the window's range in the normalisation, as in the graph

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.specs), int(self.specs[0].mel.shape[1]), self.frames

    @classmethod
    def load(cls, path: str | Path) -> Frontend:
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                n = int(z["n_specs"])
                specs = tuple(
                    Spectrogram(
                        frame_length=int(z[f"frame_length_{i}"]), hop=int(z[f"hop_{i}"]),
                        window=np.ascontiguousarray(z[f"window_{i}"], dtype=np.float32),
                        first_bin=int(z[f"first_bin_{i}"]),
                        mel=np.ascontiguousarray(z[f"mel_{i}"], dtype=np.float32),
                        power=float(z[f"power_{i}"]),
                    )
                    for i in range(n)
                )
                return cls(specs=specs, frames=int(z["frames"]), eps=float(z["eps"]))
        except FileNotFoundError as exc:
            raise FrontendError(f"front-end parameters not found: {path} (run `make model`)") from exc
        except KeyError as exc:
            raise FrontendError(f"front-end parameters {path}: missing {exc}") from exc

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"n_specs": np.array(len(self.specs)), "frames": np.array(self.frames),
                                         "eps": np.array(self.eps, dtype=np.float32)}
        for i, s in enumerate(self.specs):
            arrays |= {f"frame_length_{i}": np.array(s.frame_length), f"hop_{i}": np.array(s.hop),
                       f"window_{i}": s.window, f"first_bin_{i}": np.array(s.first_bin),
                       f"mel_{i}": s.mel, f"power_{i}": np.array(s.power, dtype=np.float32)}
        # np.savez stamps each member with the current time; a fixed stamp keeps the file's sha256
        # the same on every build.
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
            for name in sorted(arrays):
                with z.open(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                    np.lib.format.write_array(f, np.asarray(arrays[name]), allow_pickle=False)

    def normalise(self, windows: np.ndarray) -> np.ndarray:
        """The graph's own first ops, in float32 as it does them: (x - min) / (range + eps) to [-1, 1]."""
        x = np.asarray(windows, dtype=np.float32)
        x = x - x.min(axis=1, keepdims=True)
        x = x / (x.max(axis=1, keepdims=True) + np.float32(self.eps))
        return np.asarray((x - np.float32(0.5)) * np.float32(2.0), dtype=np.float32)

    def _one(self, x: np.ndarray, spec: Spectrogram, out: np.ndarray) -> None:
        frames = sliding_window_view(x, spec.frame_length)[:: spec.hop][: self.frames]
        # float64 frames: the rFFT of BirdNET's real-part quirk cancels large terms on tonal input, and
        # costs no more here than float32 (measured); the result is rounded once, to float32.
        re = np.fft.rfft(frames * spec.window.astype(np.float64), axis=-1).real
        band = re[:, spec.first_bin: spec.first_bin + spec.mel.shape[0]].astype(np.float32)
        mel = band @ spec.mel
        np.power(mel * mel, np.float32(spec.power), out=mel)
        out[:] = mel[:, ::-1].T

    def __call__(self, windows: np.ndarray, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
        """float32 [n, specs, bands, frames] for float32 windows [n, samples]."""
        x = self.normalise(windows)
        channels, bands, frames = self.shape
        out = np.empty((x.shape[0], channels, bands, frames), dtype=np.float32)
        jobs = [(i, c) for i in range(x.shape[0]) for c in range(channels)]
        if pool is None or len(jobs) == 1:
            for i, c in jobs:
                self._one(x[i], self.specs[c], out[i, c])
        else:
            list(pool.map(lambda job: self._one(x[job[0]], self.specs[job[1]], out[job[0], job[1]]), jobs))
        return out
