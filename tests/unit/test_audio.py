import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sentinela.adapters.audio import AudioError, probe, read_mono, windows
from tests.conftest import SR, encode, noise, tone, unknown_length_flac

WIN, HOP = 144000, 72000


def _wins(src: object, **kw: object) -> list[tuple[float, np.ndarray]]:
    return list(windows(src, sample_rate=SR, window=WIN, hop=HOP, **kw))  # type: ignore[arg-type]


def test_windows_cover_the_clip_at_the_hop() -> None:
    ws = _wins(encode(noise(10.0)))
    assert [s for s, _ in ws] == [0.0, 1.5, 3.0, 4.5, 6.0, 7.5]  # the last one padded (7.5 .. 10.5)
    assert all(w.shape == (WIN,) and w.dtype == np.float32 for _, w in ws)
    assert not ws[-1][1][-SR // 4 :].any()


def test_short_clip_is_padded_to_one_window() -> None:
    ws = _wins(encode(noise(0.3)))
    assert len(ws) == 1 and ws[0][0] == 0.0
    assert np.count_nonzero(ws[0][1]) > 0 and not ws[0][1][SR:].any()


def test_exact_window_gives_one_window() -> None:
    assert len(_wins(encode(noise(3.0)))) == 1


@pytest.mark.parametrize("sr", [8000, 11025, 16000, 22050, 32000, 44100, 48000, 96000, 192000])
def test_any_rate_is_resampled_to_48k(sr: int) -> None:
    x = tone(4.0, freq=440.0, amp=0.5, sr=sr)
    ws = _wins(encode(x, sr))
    assert len(ws) == 2
    w = ws[0][1]
    spectrum = np.abs(np.fft.rfft(w))
    assert abs(np.argmax(spectrum) * SR / WIN - 440.0) < 2.0  # the tone is still at 440 Hz
    assert 0.45 < np.abs(w[SR : 2 * SR]).max() < 0.55


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 6, 8])
def test_channels_are_mixed_to_mono(channels: int) -> None:
    x = np.stack([tone(3.0, amp=0.4)] * channels, axis=1)
    ws = _wins(encode(x))
    assert len(ws) == 1 and 0.35 < np.abs(ws[0][1]).max() < 0.45


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [("WAV", "PCM_U8"), ("WAV", "PCM_16"), ("WAV", "PCM_24"), ("WAV", "PCM_32"), ("WAV", "FLOAT"),
     ("WAV", "DOUBLE"), ("FLAC", "PCM_16"), ("FLAC", "PCM_24"), ("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")],
)
def test_formats_and_bit_depths(fmt: str, subtype: str) -> None:
    data = encode(tone(3.5, amp=0.5), SR, fmt, subtype)
    info = probe(data)
    assert info.channels == 1 and info.sample_rate == SR
    ws = _wins(data)
    assert len(ws) >= 1 and 0.3 < np.abs(ws[0][1]).max() < 0.7


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    p = tmp_path / "really-flac.wav"
    p.write_bytes(encode(tone(3.0), SR, "FLAC"))
    assert probe(p).ext == "flac"
    assert len(_wins(p)) == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"empty object \(0 bytes\)"),
        (b"\x00" * 5000, "unreadable audio"),
        (np.random.default_rng(1).bytes(20000), "unreadable audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "unreadable audio"),
    ],
)
def test_bad_input_gets_a_specific_reason(data: bytes, reason: str) -> None:
    with pytest.raises(AudioError, match=reason):
        _wins(data)


def test_zero_length_audio() -> None:
    with pytest.raises(AudioError, match="zero-length"):
        _wins(encode(np.zeros(0, np.float32)))


def test_truncated_flac_is_rejected_or_decoded_without_crash() -> None:
    data = encode(noise(5.0, amp=0.3), SR, "FLAC")
    cut = data[: len(data) // 2]
    try:
        ws = _wins(cut)
    except AudioError as exc:
        assert exc.reason  # a reason, not a traceback
    else:
        assert 1 <= len(ws) <= 3


def test_nan_samples_are_rejected() -> None:
    x = noise(4.0)
    x[SR] = np.nan
    with pytest.raises(AudioError, match="non-finite"):
        _wins(encode(x, SR, "WAV", "FLOAT"))


def test_over_long_clip_is_rejected_before_decoding() -> None:
    with pytest.raises(AudioError, match="over the 5 s cap"):
        windows(encode(noise(6.0)), sample_rate=SR, window=WIN, hop=HOP, max_seconds=5)


def test_quality_flags() -> None:
    w = windows(encode(np.zeros(SR * 3, np.float32)), sample_rate=SR, window=WIN, hop=HOP)
    list(w)
    assert "silent" in w.stats.flags()
    w = windows(encode(noise(3.0) + 0.4), sample_rate=SR, window=WIN, hop=HOP)
    list(w)
    assert "dc_offset" in w.stats.flags()
    w = windows(encode(np.clip(tone(3.0, amp=3.0), -1, 1)), sample_rate=SR, window=WIN, hop=HOP)
    list(w)
    assert "clipped" in w.stats.flags()


def test_long_clip_is_read_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded memory: the decoder never asks soundfile for more than one block at a time."""
    sizes: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self: sf.SoundFile, frames: int = -1, *a: object, **kw: object) -> object:
        sizes.append(frames)
        return real_read(self, frames, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    ws = _wins(encode(noise(65.0, amp=0.1, sr=16000), 16000))
    assert len(ws) == 43
    assert sizes and all(0 < s <= 160000 for s in sizes)


def test_read_mono_for_short_clips() -> None:
    x = read_mono(io.BytesIO(encode(np.stack([tone(1.0, sr=16000)] * 2, 1), 16000)), SR)
    assert x.shape == (SR,)


def test_unknown_length_flac_is_decoded_to_its_end() -> None:
    """STREAMINFO total_samples = 0 means "unknown" (FLAC written to a pipe): libsndfile reports 2**63-1
    frames, which once read as a 192153584101141 s clip. It is streamed to its end instead."""
    x = noise(7.25, amp=0.2, sr=16000)
    w = windows(unknown_length_flac(encode(x, 16000, "FLAC")), sample_rate=SR, window=WIN, hop=HOP,
                max_seconds=60)
    assert not w.info.length_known
    got = list(w)
    assert w.info.length_known and w.info.frames == x.size and w.info.duration_s == 7.25
    assert len(got) == len(_wins(encode(x, 16000, "FLAC")))  # the same windows as with its length known
    assert w.stats.n == x.size


def test_unknown_length_flac_is_capped_on_what_is_decoded() -> None:
    data = unknown_length_flac(encode(noise(50.0, amp=0.2, sr=8000), 8000, "FLAC"))
    with pytest.raises(AudioError, match=r"^clip is over the 40 s cap \(decoding stopped at \d+ s; the header "
                                         r"gives no length\)$"):
        list(windows(data, sample_rate=SR, window=WIN, hop=HOP, max_seconds=40))


def test_unknown_length_flac_cut_short_is_rejected_with_where() -> None:
    data = unknown_length_flac(encode(noise(5.0, amp=0.3), SR, "FLAC"))
    with pytest.raises(AudioError, match=r"^corrupt audio data after \d\.\d s: flac decoder lost sync$"):
        list(windows(data[: len(data) // 2], sample_rate=SR, window=WIN, hop=HOP))


@pytest.mark.parametrize("rate,channels", [(8000, 1), (48000, 1), (48000, 2), (192000, 8), (655350, 8),
                                           (655350, 1), (384000, 32)])
def test_a_block_is_bounded_in_samples_whatever_the_rate_and_channels(rate: int, channels: int) -> None:
    from sentinela.adapters.audio import BLOCK_SAMPLES, block_frames

    frames = block_frames(rate, channels)
    assert 0 < frames * channels <= BLOCK_SAMPLES
    assert frames <= rate * 10  # and never more than 10 s


def test_float_samples_far_beyond_full_scale_are_rejected_not_stored_as_inf() -> None:
    x = noise(4.0)
    x[SR : 2 * SR] = 1e30  # finite in float32; its square is not
    with pytest.raises(AudioError, match=r"^48000 samples beyond \+/-1000 times full scale \(up to 1e\+30\) from "
                                         r"1\.0 s: not audio the model can score$"):
        list(windows(encode(x, SR, "WAV", "FLOAT"), sample_rate=SR, window=WIN, hop=HOP))


def test_signal_stats_stay_finite_where_float32_squares_overflow() -> None:
    from sentinela.adapters.audio import SignalStats

    st = SignalStats()
    st.update(np.full(1000, 1e30, np.float32))  # (1e30)**2 is inf in float32
    assert np.isfinite(st.rms) and st.rms == pytest.approx(1e30, rel=1e-6)
