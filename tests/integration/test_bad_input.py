"""The whole bad-input corpus of issue 6, generated here and pushed through the local stack with the real
handlers, in one batch with good clips that must still alert.

Each case asserts what ops would see: the clip record's status and specific reason (or quality flags),
the object still in the bucket and tagged, and the ClipsRejected / ClipsProcessed metric in the
handler's EMF output. The "clip corpus" section of docs/BAD_INPUT.md is this corpus's output; the test
fails when the two disagree. Regenerate every section with:

    SENTINELA_WRITE_DOCS=1 .venv/bin/python -m pytest -q tests/integration
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from sentinela import runtime
from sentinela.adapters.store import Store
from sentinela.domain.keys import make_key
from sentinela.services.pipeline import _TAG_SAFE
from sentinela_tools.local.stack import LocalStack
from tests.conftest import SR, encode, impulse, noise, tone, unknown_length_flac
from tests.integration.conftest import seed
from tests.integration.docs_section import check_section

pytestmark = pytest.mark.integration

MAX_SECONDS, MAX_BYTES = 40, 3_000_000
BASE = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
SITE, GOOD_SITE = "corpus", "corpus-good"
NOT_DELIVERED = "not delivered"


@dataclass
class Case:
    group: str
    what: str
    data: bytes
    ext: str = "wav"
    key: str | None = None  # a literal key (keys outside the scheme); else a valid generated key
    status: str = "rejected"  # rejected | processed | not delivered
    reason: str | None = None  # regular expression the recorded reason must match
    flags: tuple[str, ...] = ()  # flags a processed clip must carry
    fields: dict[str, Any] = field(default_factory=dict)  # clip fields a processed clip must carry


def _wav(x: np.ndarray, sr: int = SR, subtype: str | None = None) -> bytes:
    return encode(x, sr, "WAV", subtype)


def _zero_sample_rate(data: bytes) -> bytes:
    return data[:24] + b"\0\0\0\0" + data[28:]


def corpus() -> list[Case]:
    n35 = noise(3.5, amp=0.05)
    wav = _wav(n35)
    flac = encode(noise(5.0, amp=0.3), SR, "FLAC")
    nan = noise(4.0)
    nan[SR : SR + 12] = np.nan
    inf = noise(4.0)
    inf[2 * SR] = np.inf
    key_wav = _wav(noise(1.0))
    huge = noise(4.0)
    huge[SR : 2 * SR] = 1e30
    cases = [
        Case("bytes", "zero bytes", b"", reason=r"^empty object \(0 bytes\)$"),
        Case("bytes", "WAV cut inside its header (20 bytes)", wav[:20],
             reason=r"^unreadable audio: Error in WAV/W64/RF64 file\. Malformed 'fmt ' chunk$"),
        Case("bytes", "WAV header only: promises 3.5 s, holds no samples", wav[:44],
             reason=r"^truncated: the header declares 3\.5 s of audio, the file holds none$"),
        Case("bytes", "WAV cut in the middle of its samples", wav[: len(wav) // 2], status="processed",
             flags=("truncated",)),
        Case("bytes", "WAV with a corrupt 'fmt ' chunk", wav[:20] + b"\x99\x99" + wav[22:],
             reason=r"^unreadable audio: Error in WAV/W64/RF64 file\. Malformed 'fmt ' chunk$"),
        Case("bytes", "WAV whose header gives sample rate 0", _zero_sample_rate(wav),
             reason=r"^unreadable audio: Internal error : SF_INFO struct incomplete$"),
        Case("bytes", "FLAC cut in half", flac[: len(flac) // 2], ext="flac",
             reason=r"^corrupt audio data after 2\.5 s: flac decoder lost sync$"),
        Case("bytes", "random bytes named .wav", np.random.default_rng(0).bytes(20000),
             reason=r"^unreadable audio: Format not recognised$"),
        Case("bytes", "random bytes that start with an MPEG sync word, named .mp3",
             np.random.default_rng(1).bytes(20000), ext="mp3",
             reason=r"^unreadable audio: Format not recognised \(MPEG sync bytes but no decodable frame\)$"),
        Case("bytes", "a text file named .flac", b"not audio at all\n" * 200, ext="flac",
             reason=r"^unreadable audio: Format not recognised$"),
        Case("bytes", "Ogg Vorbis cut after 3000 bytes", encode(n35, SR, "OGG", "VORBIS")[:3000], ext="ogg",
             reason=r"^unreadable audio: Supported file format but file is malformed$"),
        Case("extension", "valid FLAC named .wav", encode(n35, SR, "FLAC"), status="processed",
             flags=("content_is_flac",), fields={"format": "FLAC"}),
        Case("extension", "valid WAV named .flac", wav, ext="flac", status="processed", flags=("content_is_wav",)),
        Case("extension", "valid Ogg Vorbis named .mp3", encode(n35, SR, "OGG", "VORBIS"), ext="mp3",
             status="processed", flags=("content_is_ogg",)),
        Case("extension", "valid MP3 named .wav", encode(n35, SR, "MP3", "MPEG_LAYER_III"), status="processed",
             flags=("content_is_mp3",)),
        Case("samples", "zero-length audio (valid header, 0 frames)", _wav(np.zeros(0, np.float32)),
             reason=r"^no audio samples \(zero-length clip\)$"),
        Case("samples", "12 NaN samples at 1.0 s (32-bit float WAV)", _wav(nan, subtype="FLOAT"),
             reason=r"^12 non-finite samples \(NaN/Inf\) from 1\.0 s$"),
        Case("samples", "one +Inf sample at 2.0 s (64-bit float WAV)", _wav(inf, subtype="DOUBLE"),
             reason=r"^1 non-finite samples \(NaN/Inf\) from 2\.0 s$"),
        Case("samples", "digital silence", _wav(np.zeros(int(3.5 * SR), np.float32)), status="processed",
             flags=("silent",)),
        Case("samples", "DC offset (+0.4)", _wav(n35 + 0.4), status="processed", flags=("dc_offset",)),
        Case("samples", "clipped (a tone driven 3x into full scale)", _wav(np.clip(tone(3.5, amp=3.0), -1, 1)),
             status="processed", flags=("clipped",)),
    ]
    for ch in range(1, 9):
        x = np.stack([noise(3.5, amp=0.05, seed=c) for c in range(ch)], axis=1)
        cases.append(Case("channels", f"{ch} channel(s), 48 kHz 16-bit", _wav(x), status="processed",
                          flags=(f"mixed_{ch}ch",) if ch > 1 else (), fields={"channels": ch}))
    for sr in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 176400, 192000):
        cases.append(Case("rate", f"{sr / 1000:g} kHz mono 16-bit", _wav(noise(3.5, amp=0.05, sr=sr), sr),
                          status="processed", fields={"sample_rate": sr}))
    for fmt, subtype, ext in (("WAV", "PCM_U8", "wav"), ("WAV", "PCM_16", "wav"), ("WAV", "PCM_24", "wav"),
                              ("WAV", "PCM_32", "wav"), ("WAV", "FLOAT", "wav"), ("WAV", "DOUBLE", "wav"),
                              ("FLAC", "PCM_S8", "flac"), ("FLAC", "PCM_16", "flac"), ("FLAC", "PCM_24", "flac")):
        cases.append(Case("bit depth", f"{fmt} {subtype}", encode(n35, SR, fmt, subtype), ext=ext,
                          status="processed", fields={"subtype": subtype}))
    cases += [
        Case("length", f"45 s clip (cap set to {MAX_SECONDS} s)", _wav(noise(45.0, amp=0.05, sr=8000), 8000),
             reason=rf"^clip is 45 s long, over the {MAX_SECONDS} s cap$"),
        Case("length", f"35 s clip (under the {MAX_SECONDS} s cap)", _wav(noise(35.0, amp=0.05, sr=8000), 8000),
             status="processed", fields={"duration_s": 35.0}),
        Case("size", f"3.3 MB object (cap set to {MAX_BYTES / 1e6:g} MB)", _wav(noise(34.0, amp=0.05)),
             reason=r"^object is 3\.3 MB, over the 3 MB cap$"),
        Case("length", "FLAC with STREAMINFO total_samples = 0 (unknown length, as written to a pipe)",
             unknown_length_flac(flac), ext="flac", status="processed", fields={"duration_s": 5.0}),
        Case("length", f"unknown-length FLAC of 45 s (cap set to {MAX_SECONDS} s)",
             unknown_length_flac(encode(noise(45.0, amp=0.05, sr=8000), 8000, "FLAC")), ext="flac",
             reason=rf"^clip is over the {MAX_SECONDS} s cap \(decoding stopped at \d+ s; the header gives no "
                    r"length\)$"),
        Case("length", "unknown-length FLAC cut in half", unknown_length_flac(flac)[: len(flac) // 2], ext="flac",
             reason=r"^corrupt audio data after 2\.\d s: flac decoder lost sync$"),
        Case("samples", "samples of 1e30 from 1.0 s (32-bit float WAV: finite, but their squares are not)",
             _wav(huge, subtype="FLOAT"),
             reason=r"^48000 samples beyond \+/-1000 times full scale \(up to 1e\+30\) from 1\.0 s: not audio the "
                    r"model can score$"),
        Case("rate", "8 channels at 655.35 kHz (FLAC, 3.5 s of silence: memory is bounded by frames)",
             encode(np.zeros((int(3.5 * 655350), 8), np.float32), 655350, "FLAC"), ext="flac", status="processed",
             flags=("silent", "mixed_8ch"), fields={"sample_rate": 655350, "channels": 8}),
        Case("key", "missing part: clips/<site>/<time>.wav", key_wav, key="clips/corpus/20260301T120000Z.wav",
             reason=r"^bad key: key must be clips/<site_id>/<device_id>/<YYYYMMDDTHHMMSSZ>\.<ext>, got 3 parts$"),
        Case("key", "empty device part", key_wav, key="clips/corpus//20260301T120000Z.wav",
             reason=r"^bad key: missing device_id$"),
        Case("key", "extra part", key_wav, key="clips/corpus/k-extra/sub/20260301T120000Z.wav",
             reason=r"^bad key: key must be .* got 5 parts$"),
        Case("key", "timestamp in the wrong format", key_wav, key="clips/corpus/k-iso/2026-03-01T12:00:00Z.wav",
             reason=r"^bad key: file name '2026-03-01T12:00:00Z' is not a UTC time YYYYMMDDTHHMMSSZ$"),
        Case("key", "impossible timestamp (month 13)", key_wav, key="clips/corpus/k-date/20261301T120000Z.wav",
             reason=r"^bad key: file name '20261301T120000Z' is not a valid time \(.*\)$"),
        Case("key", "'..' as the site", key_wav, key="clips/../k-dots/20260301T120000Z.wav",
             reason=r"^bad key: site_id may not be '\.\.'$"),
        Case("key", "'..' as the device", key_wav, key="clips/corpus/../20260301T120000Z.wav",
             reason=r"^bad key: device_id may not be '\.\.'$"),
        Case("key", "unicode in the site id", key_wav, key="clips/sitio-ñuble/k-uni/20260301T120000Z.wav",
             reason=r"^bad key: site_id 'sitio-ñuble' has characters outside A-Z a-z 0-9 - _"),
        Case("key", "space in the device id", key_wav, key="clips/corpus/rec 01/20260301T120000Z.wav",
             reason=r"^bad key: device_id 'rec 01' has characters outside"),
        Case("key", "'+' in the device id", key_wav, key="clips/corpus/rec+01/20260301T120000Z.wav",
             reason=r"^bad key: device_id 'rec\+01' has characters outside"),
        Case("key", "URL-encoded slash in the device id (literal %2F)", key_wav,
             key="clips/corpus/rec%2F01/20260301T120000Z.wav",
             reason=r"^bad key: device_id 'rec%2F01' has characters outside"),
        Case("key", "URL-encoded space in the file name (literal %20)", key_wav,
             key="clips/corpus/k-enc/20260301T120000Z%20.wav",
             reason=r"^bad key: file name '20260301T120000Z%20' is not a UTC time"),
        Case("key", "device id over 64 characters", key_wav, key=f"clips/corpus/{'d' * 65}/20260301T120000Z.wav",
             reason=r"^bad key: device_id 'd{65}' has characters outside .* \(or is longer than 64\)$"),
        Case("key", "upper-case extension .WAV (as AudioMoth names files)", key_wav,
             key="clips/corpus/k-upper/20260301T120000Z.WAV", status="processed"),
        Case("key", "not an audio extension (.txt)", key_wav, key="clips/corpus/k-txt/20260301T120000Z.txt",
             status=NOT_DELIVERED),
    ]
    return cases


@pytest.fixture(scope="module")
def caps() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("MAX_CLIP_SECONDS", "MAX_CLIP_BYTES")}
    os.environ.update({"MAX_CLIP_SECONDS": str(MAX_SECONDS), "MAX_CLIP_BYTES": str(MAX_BYTES)})
    runtime.reset()  # settings are cached per process, as in a Lambda container
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    runtime.reset()


def _emf(text: str) -> dict[str, dict[str, Any]]:
    """The handler's EMF records (Powertools prints one per invocation) by clip key."""
    out: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            rec = json.loads(line)
            if "clip_key" in rec:  # metric values are lists in EMF; one invocation per clip here
                out[rec["clip_key"]] = {k: sum(v) if isinstance(v, list) else v for k, v in rec.items()}
    return out


def _outcome(case: Case, clip: dict[str, Any] | None) -> tuple[str, str]:
    if clip is None:
        return NOT_DELIVERED, "no S3 event: not one of the suffixes classify is subscribed to"
    if clip["status"] == "rejected":
        return "rejected", clip["reason"]
    notes = [f for f in clip.get("flags", [])]
    detail = f"{clip['format']} {clip['subtype']}, {clip['channels']} ch, {clip['sample_rate']} Hz, " \
             f"{clip['duration_s']:g} s"
    return "processed", detail + (f"; flags: {', '.join(notes)}" if notes else "")


def test_bad_input_corpus(stack: LocalStack, store: Store, caps: None, capsys: pytest.CaptureFixture[str]) -> None:
    s3 = stack.client("s3")
    bucket = stack.names["ClipsBucket"]
    cases = corpus()
    uploaded: list[tuple[Case, str, str | None]] = []
    good: list[str] = []
    for i, case in enumerate(cases):
        if i % 20 == 0:  # good clips interleaved with the broken ones, in the same batch of deliveries
            site = f"{GOOD_SITE}-{len(good)}"  # a site each: one incident, one text per good clip
            seed(store, site, [("ana", f"+569000006{len(good):02d}", "es")])
            key, _ = stack.upload(encode(impulse()), site, "g01", BASE)
            good.append(key)
        key = case.key or make_key(SITE, f"c{i:02d}", BASE + dt.timedelta(minutes=i), case.ext)
        res = s3.put_object(Bucket=bucket, Key=key, Body=case.data)
        uploaded.append((case, key, res.get("VersionId")))
    capsys.readouterr()
    stack.run_until_idle()
    emf = _emf(capsys.readouterr().out)

    clips = {(c["key"], c["version_id"]): c for c in store.scan_all() if c.get("type") == "clip"}
    rows = []
    for case, key, version in uploaded:
        clip = clips.get((key, version))
        status, detail = _outcome(case, clip)
        assert status == case.status, (case.what, key, clip)
        rows.append((case, key, status, detail))
        if status == NOT_DELIVERED:
            continue
        assert clip is not None
        tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key, VersionId=version)[
            "TagSet"]}
        head = s3.head_object(Bucket=bucket, Key=key, VersionId=version)
        assert head["ContentLength"] == len(case.data)  # the object is kept, whatever happened to it
        assert tags["sentinela-status"] == status
        metrics = emf[key]
        if status == "rejected":
            assert case.reason and re.search(case.reason, clip["reason"]), (case.what, clip["reason"])
            assert tags["sentinela-reason"] == _TAG_SAFE.sub("_", clip["reason"])[:256]
            assert metrics.get("ClipsRejected") == 1.0 and "ClipsProcessed" not in metrics, metrics
        else:
            assert "reason" not in clip and metrics.get("ClipsProcessed") == 1.0, metrics
            assert set(case.flags) <= set(clip["flags"]), (case.what, clip["flags"])
            for k, v in case.fields.items():
                assert clip[k] == v, (case.what, k, clip[k])
            quality = [f for f in clip["flags"] if f in ("silent", "dc_offset", "clipped", "truncated")]
            for f in quality:
                assert metrics.get(f"ClipQuality_{f}") == 1.0
            assert tags.get("sentinela-quality", "") == " ".join(quality)

    # The good clips in the same batch were processed, alerted and texted as if nothing else happened.
    for key in good:
        (clip,) = [c for (k, _), c in clips.items() if k == key]
        assert clip["status"] == "processed" and clip["alerts"] == ["gunshot"], clip
    for n in range(len(good)):
        texts = [m for m in stack.twilio.outbox if m.to == f"+569000006{n:02d}"]
        assert len(texts) == 1 and "DISPARO" in texts[0].body, texts

    check_section("clip corpus", render(rows, len(good)))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: list[tuple[Case, str, str, str]], good: int) -> str:
    lines = [
        "# Bad input: what each kind produces",
        "",
        "Generated by the tests that push each kind of bad input through the local stack (regenerate every "
        "section: `SENTINELA_WRITE_DOCS=1 .venv/bin/python -m pytest -q tests/integration`; a test fails when "
        "its section and its cases disagree).",
        "",
        "## Clips: what each broken upload produces",
        "",
        "From `tests/integration/test_bad_input.py`. Every object below was uploaded to the local stack's "
        "bucket in one batch together with "
        f"{good} good clips (a gunshot each), and went through the real `classify` handler with "
        f"`MAX_CLIP_SECONDS={MAX_SECONDS}` and `MAX_CLIP_BYTES={MAX_BYTES}` (deployed defaults: 7200 s, 200 MB). "
        "The good clips were all processed and texted.",
        "",
        "For every delivered object: the object stays in the bucket; it is tagged `sentinela-status` "
        "(and `sentinela-reason` when rejected, `sentinela-quality` when a quality flag is set); the clip "
        "record (`CLIP#...`) holds the status and the reason or flags; the handler emits `ClipsRejected` or "
        "`ClipsProcessed` (+ `ClipQuality_<flag>`) with the clip key in the EMF record's metadata.",
        "",
        "| # | group | input | uploaded as | status | reason (rejected) / what was read (processed) |",
        "|---|---|---|---|---|---|",
    ]
    for i, (case, key, status, detail) in enumerate(rows, 1):
        shown = key if case.key else f"….{key.rsplit('.', 1)[1]}"
        lines.append(f"| {i} | {case.group} | {_cell(case.what)} | `{_cell(shown)}` | {status} | {_cell(detail)} |")
    lines += [
        "",
        "Notes:",
        "- Quality flags (`silent`, `dc_offset`, `clipped`, `truncated`) do not reject a clip: a recorder's "
        "odd clip may still hold a chainsaw. They are recorded, tagged and counted so ops can find the device.",
        "- A WAV cut mid-samples is processed up to the cut and flagged `truncated` (its header promises more). "
        "A FLAC cut mid-stream is rejected: libsndfile fails the whole read at the cut, so the decodable "
        "first part is not salvaged (yet).",
        "- S3 suffix filters are case-sensitive on AWS, so the template subscribes classify to both cases of "
        "each extension. Objects with other extensions never reach classify (by design: not audio).",
        "",
    ]
    return "\n".join(lines)
