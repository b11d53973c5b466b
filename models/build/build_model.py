#!/usr/bin/env python3
"""`make model`: build the BirdNET V2.4 ONNX model reproducibly and verify it against the TFLite original.

This launcher runs with the plain system python3 and imports only the standard library, because the
converter stack (TensorFlow, tf2onnx) is heavy and must never leak into the project's dev venv or the
Lambda layer. It:
  1. returns at once when models/dist/birdnet_v24.onnx matches the sha256 recorded in models/card.json;
  2. creates (once) an isolated venv under .cache/model-build/ from models/build/requirements.txt,
     reinstalled only when that file (or the Python running this) changes;
  3. re-executes convert.py inside that venv, which does the download, conversion and verification.

usage: python3 models/build/build_model.py [--force] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BUILD_DIR = Path(__file__).resolve().parent
REPO = BUILD_DIR.parents[1]
sys.path.insert(0, str(BUILD_DIR))

from birdnet_source import sha256_file  # noqa: E402  (stdlib-only sibling module)
from model_card import model_entry  # noqa: E402

MODELS_DIR = REPO / "models"
DIST_DIR = MODELS_DIR / "dist"
CARD_PATH = MODELS_DIR / "card.json"
REQUIREMENTS = BUILD_DIR / "requirements.txt"
DEFAULT_CACHE = REPO / ".cache" / "model-build"
ONNX_NAME = "birdnet_v24.onnx"
# Everything a consumer of dist/ expects next to the model; a partial dist/ is rebuilt.
DIST_FILES = (ONNX_NAME, "birdnet_v24_fft.onnx", "birdnet_v24_frontend.npz", "birdnet_v24_conv.onnx",
              "labels.txt", "LICENSE",
              "birdnet_v24.tflite", "verify.json")

ENV_STARTED = "SENTINELA_MODEL_BUILD_STARTED"
ENV_VENV_SECONDS = "SENTINELA_MODEL_BUILD_VENV_SECONDS"


def stale_reason(dist_dir: Path, card_path: Path) -> str | None:
    """Why the built model cannot be reused, or None when it is up to date."""
    missing = [name for name in DIST_FILES if not (dist_dir / name).is_file()]
    if missing:
        return f"missing in {dist_dir}: {', '.join(missing)}"
    recorded = model_entry(card_path).get("sha256")
    if not recorded:
        return f"no model sha256 recorded in {card_path}"
    actual = sha256_file(dist_dir / ONNX_NAME)
    if actual != recorded:
        return f"{ONNX_NAME} sha256 {actual[:12]}… differs from the card's {str(recorded)[:12]}…"
    return None


def venv_key(requirements: Path) -> str:
    # The interpreter is part of the key: a venv is bound to the Python that created it.
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(f"{sys.version}|{platform.machine()}|{sys.base_prefix}".encode())
    return digest.hexdigest()


def ensure_venv(venv: Path, requirements: Path) -> Path:
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    key = venv_key(requirements)
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return python
    if venv.exists():
        print(f"[model] {requirements.name} changed: recreating {venv}", flush=True)
        shutil.rmtree(venv)
    print(f"[model] creating build venv {venv} (TensorFlow-sized: a few minutes the first time)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--quiet", "-r", str(requirements)], check=True)
    # The stamp is written last so that an interrupted install is redone, not trusted.
    stamp.write_text(key + "\n")
    return python


def main(argv: list[str] | None = None) -> int:
    started = time.time()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--force", action="store_true", help="rebuild even when the model is up to date")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"downloads and the build venv (default {DEFAULT_CACHE.relative_to(REPO)})")
    args = parser.parse_args(argv)

    if not args.force:
        reason = stale_reason(DIST_DIR, CARD_PATH)
        if reason is None:
            rel = (DIST_DIR / ONNX_NAME).relative_to(REPO)
            print(f"[model] model up to date: {rel} matches models/card.json "
                  f"({time.time() - started:.1f}s; --force to rebuild)")
            return 0
        print(f"[model] building: {reason}", flush=True)

    cache_dir = args.cache_dir.resolve()
    python = ensure_venv(cache_dir / "venv", REQUIREMENTS)
    env = dict(os.environ)
    env[ENV_STARTED] = repr(started)
    env[ENV_VENV_SECONDS] = f"{time.time() - started:.3f}"
    # tf2onnx walks Python sets of tensor names in places; a fixed hash seed keeps the node order, and so
    # the bytes of the ONNX file, the same from one build to the next.
    env["PYTHONHASHSEED"] = "0"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [str(python), str(BUILD_DIR / "convert.py"), "--cache-dir", str(cache_dir),
           "--dist-dir", str(DIST_DIR), "--card", str(CARD_PATH)]
    sys.stdout.flush()
    os.execve(cmd[0], cmd, env)
    return 1  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
