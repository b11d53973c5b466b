"""Peak memory of classifying one generated clip, in a fresh process per case: what bounds classify's
memory is the decoder's block (frames x channels), not the clip's length or rate.

    .venv/bin/python -m sentinela_tools.devtools.peak_rss                       # the default cases
    .venv/bin/python -m sentinela_tools.devtools.peak_rss --case 655350:8:60 --case 48000:1:600

A case is RATE:CHANNELS:SECONDS of digitally silent FLAC (tiny on disk, like the 113 KB file of issue
12; the decoder and the resampler do the same work per frame whatever the content). Prints one line per
case: peak RSS in MB (``ru_maxrss`` of the child that decoded and scored it), file size, outcome.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CASES = ("48000:1:600", "655350:8:60", "192000:8:120", "384000:2:120")


def _child(path: str, card: str | None) -> None:
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.config import Settings, default_card_path
    from sentinela.domain.card import load_card
    from sentinela.services.classify import classify_source

    model = BirdNetOnnx(load_card(Path(card) if card else default_card_path()))
    try:
        out = classify_source(path, model, max_seconds=Settings.from_env().max_clip_seconds)
        outcome = f"processed {out.info.duration_s:g} s, {len(out.result.detections)} detections"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "outcome": outcome}))


def _write(path: Path, rate: int, channels: int, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    block = max(1, 480_000 // channels)
    silence = np.zeros((block, channels), np.float32)
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        left = int(rate * seconds)
        while left > 0:
            n = min(block, left)
            f.write(silence[:n])
            left -= n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", action="append", help="RATE:CHANNELS:SECONDS (repeatable)")
    p.add_argument("--card", help="model card (default: the configured one)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.card)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case or DEFAULT_CASES:
            rate, channels, seconds = (float(v) for v in case.split(":"))
            path = Path(tmp) / f"{int(rate)}-{int(channels)}.flac"
            _write(path, int(rate), int(channels), seconds)
            cmd = [sys.executable, "-m", "sentinela_tools.devtools.peak_rss", "--child", str(path)]
            res = subprocess.run(cmd + (["--card", args.card] if args.card else []), capture_output=True,
                                 text=True, check=False)
            try:
                rep = json.loads(res.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                print(f"{case}: child failed: {res.stderr.strip()[-300:]}")
                continue
            print(f"{int(rate):>7} Hz {int(channels)} ch {seconds:>6g} s  file {path.stat().st_size / 1e6:7.2f} MB  "
                  f"peak RSS {rep['peak_rss_mb']:6.0f} MB  {rep['outcome']}")
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
