"""Does a hop as long as the window miss a short threat that falls on a window boundary?

    python -m sentinela_tools.devtools.boundary_probe ../shared/audio/train --class gunshot --hops 1.5,3.0

The card's windows are 3 s long every 1.5 s; a hop of 3 s would halve the model's work (docs/BENCHMARKS.md),
but then a 1-s gunshot that straddles two windows is heard half in each. This measures what that costs on
real recordings, through the classify path itself (``classify_source`` with the card's model, head and
thresholds, once per hop):

- from every ``--step``-th clip of ``DIR/<class>/`` (at most ``--n``) the loudest ``--event-s`` seconds are
  cut out (the whole clip when it is shorter);
- each event is added, at its recorded level, to a clip of ``DIR/background/`` looped to ``--length-s``
  seconds, twice: centred in a window of the window-long grid (every hop sees it whole) and centred on a
  boundary of that grid (a window-long hop splits it; the 1.5-s hop still has a window around it);
- a hit is the class alerting on the mix; the backgrounds alone are run too (their false alarms).

It prints hits per hop and placement and the backgrounds' alerts; ``--json`` writes the same. An
exploration tool: nothing it makes is written into the repository. The mixes are at the recorded levels
of two different recordings, so the figures compare hops with each other, not with field recall.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np


def loudest(x: np.ndarray, sample_rate: int, event_s: float) -> np.ndarray:
    """The ``event_s`` seconds of ``x`` with the most energy (all of ``x`` when it is shorter)."""
    n = round(event_s * sample_rate)
    if x.size <= n:
        return x.astype(np.float32)
    energy = np.concatenate([[0.0], np.cumsum(np.square(x, dtype=np.float64))])
    sums = energy[n:] - energy[:-n]
    start = int(np.argmax(sums))
    return x[start: start + n].astype(np.float32)


def placements(length_s: float, window_s: float) -> dict[str, float]:
    """Where an event is centred: in the middle of the second window of the window-long grid, and on
    the boundary after it. Both lie well inside a clip of ``length_s`` (at least four windows)."""
    if length_s < 4 * window_s:
        raise ValueError(f"--length-s {length_s} is shorter than four windows ({4 * window_s} s)")
    return {"centred": 1.5 * window_s, "boundary": 2.0 * window_s}


def mix(background: np.ndarray, event: np.ndarray, centre_s: float, sample_rate: int, length: int) -> np.ndarray:
    """``background`` looped to ``length`` samples with ``event`` added, centred at ``centre_s``."""
    out = np.resize(background.astype(np.float32), length)
    start = round(centre_s * sample_rate) - event.size // 2
    out[start: start + event.size] += event
    return out


def _wav(x: np.ndarray, sample_rate: int) -> io.BytesIO:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), sample_rate, format="WAV", subtype="FLOAT")
    buf.seek(0)
    return buf


def probe(folder: str, cls: str, hops: list[float], n: int, step: int, event_s: float, length_s: float,
          card_path: str, threads: int, say: Any) -> dict[str, Any]:
    from sentinela.adapters.audio import read_mono
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card
    from sentinela.services.classify import classify_source
    from sentinela_tools.evaluate import scan_dataset

    base = load_card(card_path)
    if cls not in base.threat_classes:
        raise ValueError(f"--class {cls!r} is not a threat class of the card ({', '.join(base.threat_classes)})")
    clips = scan_dataset(folder)
    threats = [c for c in clips if c.label == cls][::step][:n]
    backgrounds = [c for c in clips if c.label == "background"][::step][: max(n, 1)]
    if not threats or not backgrounds:
        raise ValueError(f"{folder} needs clips in {cls}/ and background/ (found {len(threats)} and "
                         f"{len(backgrounds)})")
    sr = base.sample_rate
    where = placements(length_s, base.window_s)
    length = round(length_s * sr)
    models = {h: BirdNetOnnx(replace(base, hop_s=h), threads=threads) for h in hops}

    def alerts(x: np.ndarray, model: BirdNetOnnx) -> set[str]:
        return {d.threat for d in classify_source(_wav(x, sr), model).result.alerts}

    bg_audio = [read_mono(c.path, sr) for c in backgrounds]
    hits = {h: {p: 0 for p in where} for h in hops}
    eligible = {h: 0 for h in hops}
    bg_alerts = {h: 0 for h in hops}
    # A background that alerts the class by itself would count as a hit whatever the event does: its mixes
    # are left out of that hop's count (``eligible``).
    bg_has_cls: dict[float, list[bool]] = {h: [] for h in hops}
    for b, x in enumerate(bg_audio):
        for h, model in models.items():
            found = alerts(np.resize(x, length), model)
            bg_alerts[h] += bool(found)
            bg_has_cls[h].append(cls in found)
        say(f"  background {b + 1}/{len(bg_audio)}")
    for i, clip in enumerate(threats):
        event = loudest(read_mono(clip.path, sr), sr, event_s)
        b = i % len(bg_audio)
        for h in hops:
            eligible[h] += not bg_has_cls[h][b]
        for p, centre in where.items():
            m = mix(bg_audio[b], event, centre, sr, length)
            for h, model in models.items():
                if not bg_has_cls[h][b]:
                    hits[h][p] += cls in alerts(m, model)
        say(f"  {cls} {i + 1}/{len(threats)}")
    return {
        "folder": folder, "class": cls, "events": len(threats), "backgrounds": len(bg_audio),
        "event_s": event_s, "length_s": length_s, "window_s": base.window_s, "placements_s": where,
        "hits": {f"{h:g}": v for h, v in hits.items()},
        "eligible": {f"{h:g}": v for h, v in eligible.items()},
        "background_alerting": {f"{h:g}": v for h, v in bg_alerts.items()},
        "card": card_path, "model_id": base.model_id,
    }


def main(argv: list[str] | None = None) -> int:
    from sentinela.config import default_card_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("dir", help="folder with <class>/ and background/ sub-folders")
    p.add_argument("--class", dest="cls", default="gunshot")
    p.add_argument("--hops", default="1.5,3.0", help="hops to compare, seconds, comma-separated")
    p.add_argument("--n", type=int, default=40, help="at most this many events")
    p.add_argument("--step", type=int, default=1, help="every step-th clip")
    p.add_argument("--event-s", type=float, default=1.0)
    p.add_argument("--length-s", type=float, default=15.0)
    p.add_argument("--card", default=str(default_card_path()))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        hops = [float(h) for h in args.hops.split(",") if h.strip()]
        report = probe(args.dir, args.cls, hops, args.n, args.step, args.event_s, args.length_s, args.card,
                       args.threads, lambda line: print(line, file=sys.stderr, flush=True))
    except (ValueError, OSError) as exc:
        print(f"boundary_probe: {exc}", file=sys.stderr)
        return 2
    print(f"{report['class']}: {report['events']} events of {report['event_s']:g} s in {report['backgrounds']} "
          f"backgrounds ({report['length_s']:g} s); {report['model_id']}")
    print(f"{'hop s':>6} {'centred':>9} {'boundary':>9} {'background alerting':>20}  (of the events whose "
          "background alone does not alert the class)")
    for h, v in report["hits"].items():
        n = report["eligible"][h]
        print(f"{h:>6} {v['centred']:>5}/{n:<3} {v['boundary']:>5}/{n:<3} "
              f"{report['background_alerting'][h]:>12}/{report['backgrounds']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
