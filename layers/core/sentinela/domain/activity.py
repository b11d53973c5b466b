"""Which model windows hold any sound at all. A window without signal scores nothing.

Digital silence, a constant, a click of a few samples, or a file at 1 Hz resampled to the model's rate
still reach the model as a window, and the model answers something for any input (BirdNET's embedding
of silence scored 0.73 "dog" with the previous head). The rangers must never be paged for nothing, so
before scores are read the window is checked: the first difference of the signal (a high-pass that
removes DC and weighs low frequencies down, 6 dB per octave) is cut into ~21-ms frames, and the window
holds signal when at least ``MIN_FRAMES`` frames have an RMS of at least ``FLOOR``.

The floor is far below anything audible (-100 dBFS on the difference: white noise at about -103 dBFS, a
1 kHz tone at -82 dBFS, a 100 Hz tone at -62 dBFS, each over the whole frame; 16-bit quantisation noise
passes): this is not a loudness gate and does not hide a faint real sound, only the absence of one. One
pass over the samples: cheap beside the model. Sound below what the file's own sample rate can carry
(a file at 1 Hz) is caught by ``MIN_SAMPLE_RATE`` instead: such a file holds nothing audible at all.
"""

from __future__ import annotations

import numpy as np

FLOOR = 10 ** (-100 / 20)  # RMS of a differenced frame
MIN_SAMPLE_RATE = 1000  # Hz: below this a file can hold no sound the model (or a ranger) could hear
FRAME = 1024
MIN_FRAMES = 2  # one frame could be a lone click or the edge of padding


def active_frames(windows: np.ndarray) -> np.ndarray:
    """int [n]: frames per window whose differenced RMS reaches FLOOR. ``windows`` is float [n, samples]."""
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    n = x.shape[0]
    d = np.diff(x, axis=1)
    f = d.shape[1] // FRAME
    if f == 0:
        return np.asarray(np.sqrt(np.mean(np.square(d), axis=1)) >= FLOOR, dtype=np.int64) * MIN_FRAMES
    frames = d[:, : f * FRAME].reshape(n, f, FRAME)
    ms = np.einsum("nfk,nfk->nf", frames, frames) / FRAME
    return np.asarray((ms >= FLOOR**2).sum(axis=1), dtype=np.int64)


def has_signal(windows: np.ndarray) -> np.ndarray:
    """bool [n]: the window holds some sound (see the module's note)."""
    return active_frames(windows) >= MIN_FRAMES
