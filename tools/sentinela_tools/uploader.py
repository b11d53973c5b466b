"""`sentinela upload`: the recorder side. Standard library HTTP (urllib) and soundfile only: no AWS SDK.

One pass over the folder:
  1. pick up recordings (.wav .flac .ogg .mp3) that are finished: a recorder that writes ``x.wav.part``
     and renames it when done is never read early; any other file must show the same size and mtime in
     two consecutive scans (so a file still being written is left alone);
  2. the recording time T comes from the file name when it holds a UTC time (``20261128T131400Z`` or the
     AudioMoth style ``20261128_131400``), otherwise from the file's mtime (UTC);
  3. 16-bit and 24-bit PCM WAV is converted to FLAC (lossless: it is read back and compared sample for
     sample, else the WAV is sent as it is); the FLAC is kept in ``.sentinela/`` until it is sent, so a
     retry sends the very same bytes;
  4. ask the presign endpoint for a POST (device id + secret + T + size + MD5 + SHA-256), upload the
     file as multipart/form-data straight to S3, and on 2xx move the original to ``sent/``;
  5. anything else keeps the file where it is and schedules a retry with exponential backoff and jitter,
     recorded in ``.sentinela/state.json`` so that a restart keeps the schedule; a clip the server
     already has (same MD5) is answered ``duplicate`` and moved to ``sent/`` without sending it again;
     a refusal that retrying cannot fix (format, future time, a different clip under that key) moves
     the file to ``failed/`` with the reason in the state file: nothing is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sentinela.domain.keys import AUDIO_EXTENSIONS, TIMESTAMP_FORMAT

STATE_DIR = ".sentinela"
_STAMPS = (
    (re.compile(r"(\d{8}T\d{6}Z)"), TIMESTAMP_FORMAT),
    (re.compile(r"(\d{8}_\d{6})"), "%Y%m%d_%H%M%S"),
)


class AuthError(Exception):
    """The endpoint refused the device itself (wrong secret, revoked): no file can be sent."""


@dataclass
class FileResult:
    name: str
    outcome: str  # sent | duplicate | retry | failed | waiting
    detail: str = ""
    key: str | None = None
    bytes_in: int = 0
    bytes_sent: int = 0


@dataclass
class PassReport:
    results: list[FileResult] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def bytes_saved(self) -> int:
        return sum(r.bytes_in - r.bytes_sent for r in self.results if r.outcome == "sent")


# --- recording time and audio ----------------------------------------------------------------------
def recorded_at(path: Path) -> datetime:
    for pattern, fmt in _STAMPS:
        m = pattern.search(path.name)
        if m:
            with contextlib.suppress(ValueError):
                return datetime.strptime(m.group(1), fmt).replace(tzinfo=UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)


def wav_to_flac(src: Path, dst: Path) -> bool:
    """Convert integer PCM WAV (16 or 24 bit) to FLAC and prove it lossless; False (nothing written) when
    the WAV is of another kind (float, 32-bit, ...) or the round trip differs."""
    import numpy as np
    import soundfile as sf

    info = sf.info(str(src))
    dtype = {"PCM_16": "int16", "PCM_24": "int32"}.get(info.subtype)
    if info.format != "WAV" or dtype is None:
        return False
    data, sr = sf.read(str(src), dtype=dtype, always_2d=True)
    tmp = dst.with_name(dst.name + ".tmp")
    sf.write(str(tmp), data, sr, format="FLAC", subtype=info.subtype)
    back, sr2 = sf.read(str(tmp), dtype=dtype, always_2d=True)
    if sr2 != sr or back.shape != data.shape or not np.array_equal(back, data):
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, dst)
    return True


def digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


# --- multipart/form-data ---------------------------------------------------------------------------
class MultipartBody(io.RawIOBase):
    """Form fields then the file (S3 wants ``file`` last), streamed from disk: the file is never held
    in memory whole. ``len(body)`` is the Content-Length."""

    def __init__(self, fields: dict[str, str], file_path: Path, content_type: str) -> None:
        self.boundary = uuid.uuid4().hex
        head = b"".join(
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in fields.items()
        )
        head += (f'--{self.boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_path.name}"'
                 f"\r\nContent-Type: {content_type}\r\n\r\n").encode()
        tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._size = len(head) + file_path.stat().st_size + len(tail)
        self._parts: list[BinaryIO] = [io.BytesIO(head), file_path.open("rb"), io.BytesIO(tail)]

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = b""
        while self._parts and (n < 0 or len(out) < n):
            chunk = self._parts[0].read(-1 if n < 0 else n - len(out))
            if not chunk:
                self._parts.pop(0).close()
                continue
            out += chunk
        return out

    def close(self) -> None:
        for p in self._parts:
            p.close()
        self._parts = []
        super().close()


# --- HTTP ------------------------------------------------------------------------------------------
def _http(req: urllib.request.Request, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) for any HTTP answer; network failures raise OSError."""
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return int(err.code), dict(err.headers.items()), err.read()


def _reason(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc.get("reason") or doc.get("message") or doc)
    except ValueError:
        m = re.search(rb"<Message>(.*?)</Message>", body)
        return (m.group(1) if m else body[:200]).decode("utf-8", "replace")


# --- the uploader ----------------------------------------------------------------------------------
class Uploader:
    def __init__(self, folder: Path, endpoint: str, site: str, device: str, secret: str, *, flac: bool = True,
                 base_delay_s: float = 30.0, max_delay_s: float = 3600.0, timeout_s: float = 120.0,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.folder, self.endpoint, self.site, self.device, self.secret = folder, endpoint, site, device, secret
        self.flac, self.base_delay_s, self.max_delay_s, self.timeout_s = flac, base_delay_s, max_delay_s, timeout_s
        self.clock = clock
        self.rng = rng or random.Random()
        self.work = folder / STATE_DIR
        self.state_path = self.work / "state.json"
        self.state: dict[str, Any] = self._load()

    # state ----------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        state.setdefault("files", {})
        state.setdefault("failed", {})
        return state

    def _save(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name("state.json.tmp")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.state_path)  # atomic: a power cut leaves the old state or the new one

    # scanning -------------------------------------------------------------------------------------
    def candidates(self) -> Iterator[Path]:
        for p in sorted(self.folder.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS:
                yield p

    def scan(self) -> list[Path]:
        """Record what is in the folder; return the files that are ready (unchanged since the last scan)."""
        files = self.state["files"]
        ready, present = [], set()
        for p in self.candidates():
            st = p.stat()
            present.add(p.name)
            entry = files.setdefault(p.name, {"attempts": 0, "next_try": 0.0})
            sig = [st.st_size, st.st_mtime_ns]
            if entry.get("sig") == sig and st.st_size > 0:
                ready.append(p)
            entry["sig"] = sig
        for gone in set(files) - present:  # removed by hand, or moved by us
            files.pop(gone)
        self._save()
        return ready

    # one pass -------------------------------------------------------------------------------------
    def run_pass(self, out: Callable[[str], None] = lambda s: None) -> PassReport:
        report = PassReport()
        now = self.clock()
        for path in self.scan():
            entry = self.state["files"][path.name]
            if entry.get("next_try", 0) > now:
                report.results.append(FileResult(path.name, "waiting",
                                                 f"next try in {entry['next_try'] - now:.0f} s"))
                continue
            res = self._send_one(path, entry)
            report.results.append(res)
            out(self.describe(res))
            self._save()
        return report

    def describe(self, r: FileResult) -> str:
        if r.outcome == "sent":
            saved = f", FLAC saved {r.bytes_in - r.bytes_sent} bytes" if r.bytes_sent < r.bytes_in else ""
            return f"sent {r.name} -> {r.key} ({r.bytes_sent} bytes{saved})"
        if r.outcome == "duplicate":
            return f"already on the server: {r.name} ({r.key}); moved to sent/"
        return f"{r.outcome}: {r.name}: {r.detail}"

    def _schedule_retry(self, entry: dict[str, Any], why: str) -> str:
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (entry["attempts"] - 1))
        delay *= self.rng.uniform(0.5, 1.0)  # jitter: recorders that lost the link together do not return together
        entry["next_try"] = self.clock() + delay
        entry["last_error"] = why
        return f"{why}; retry {entry['attempts']} in {delay:.0f} s"

    def _payload_file(self, path: Path, entry: dict[str, Any]) -> tuple[Path, str]:
        """The file to send and its extension: a kept FLAC, a new FLAC, or the original."""
        kept = entry.get("flac")
        if kept and Path(kept).is_file():
            return Path(kept), "flac"
        ext = path.suffix.lower().lstrip(".")
        if self.flac and ext == "wav":
            dst = self.work / (path.stem + ".flac")
            self.work.mkdir(parents=True, exist_ok=True)
            try:
                ok = wav_to_flac(path, dst)
            except Exception as exc:  # an unreadable WAV is still sent as it is; the server records why
                entry["flac_error"] = f"{type(exc).__name__}: {exc}"
                ok = False
            if ok:
                entry["flac"] = str(dst)
                return dst, "flac"
        return path, ext

    def _send_one(self, path: Path, entry: dict[str, Any]) -> FileResult:
        name = path.name
        when = recorded_at(path)
        body, ext = self._payload_file(path, entry)
        size = body.stat().st_size
        md5, sha = digests(body)
        ask = {"site": self.site, "device": self.device, "secret": self.secret,
               "recorded_at": when.strftime(TIMESTAMP_FORMAT), "ext": ext, "size": size, "md5": md5, "sha256": sha}
        req = urllib.request.Request(self.endpoint, data=json.dumps(ask).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            status, headers, raw = _http(req, self.timeout_s)
        except OSError as exc:
            return FileResult(name, "retry", self._schedule_retry(entry, f"endpoint unreachable ({exc})"))
        if status in (401, 403):
            entry["last_error"] = _reason(raw)
            raise AuthError(f"the endpoint refused device {self.device} at {self.site}: {_reason(raw)}")
        if status in (400, 409, 413):
            return self._fail(path, entry, f"refused ({status}): {_reason(raw)}")
        if status != 200:
            why = self._schedule_retry(entry, f"endpoint answered {status}: {_reason(raw)}")
            retry_after = headers.get("Retry-After") or headers.get("retry-after")
            if retry_after and retry_after.isdigit():  # the endpoint knows when the rate limit resets
                entry["next_try"] = max(entry["next_try"], self.clock() + int(retry_after))
            return FileResult(name, "retry", why)
        answer = json.loads(raw)
        if answer.get("duplicate"):
            self._done(path, entry)
            return FileResult(name, "duplicate", key=answer.get("key"), bytes_in=path.stat().st_size if path.exists()
                              else 0, bytes_sent=0)
        size_in = path.stat().st_size
        form = MultipartBody(answer["fields"], body, answer["fields"].get("Content-Type", "application/octet-stream"))
        up = urllib.request.Request(answer["url"], data=form, method="POST",
                                    headers={"Content-Type": form.content_type, "Content-Length": str(len(form))})
        try:
            s3_status, _, s3_raw = _http(up, self.timeout_s)
        except OSError as exc:
            return FileResult(name, "retry", self._schedule_retry(entry, f"upload interrupted ({exc})"))
        finally:
            form.close()
        if not 200 <= s3_status < 300:
            return FileResult(name, "retry",
                              self._schedule_retry(entry, f"storage answered {s3_status}: {_reason(s3_raw)}"))
        self._done(path, entry)
        return FileResult(name, "sent", key=answer.get("key"), bytes_in=size_in, bytes_sent=size)

    def _retire(self, path: Path, entry: dict[str, Any], to: str) -> None:
        """Move a file that is finished with (``sent``/ or ``failed``/), drop its FLAC copy and its state."""
        folder = self.folder / to
        folder.mkdir(exist_ok=True)
        shutil.move(str(path), str(folder / path.name))
        if entry.get("flac"):
            Path(entry["flac"]).unlink(missing_ok=True)
        self.state["files"].pop(path.name, None)

    def _done(self, path: Path, entry: dict[str, Any]) -> None:
        self._retire(path, entry, "sent")
        self.state["sent"] = int(self.state.get("sent", 0)) + 1

    def _fail(self, path: Path, entry: dict[str, Any], why: str) -> FileResult:
        self._retire(path, entry, "failed")
        self.state["failed"][path.name] = why
        return FileResult(path.name, "failed", why + " (moved to failed/)")

    def run(self, *, watch: bool, interval_s: float = 30.0, settle_s: float = 2.0,
            out: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> PassReport:
        """Without ``watch``: two scans ``settle_s`` apart, then one pass. With it: a pass every interval."""
        total = PassReport()
        self.scan()
        sleep(settle_s)
        while True:
            total.results += self.run_pass(out).results
            if not watch:
                return total
            sleep(interval_s)
