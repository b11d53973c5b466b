"""`sentinela quantgate DIR [DIR ...]`: may a faster model variant replace the whole fp32 graph?

Every clip of the labelled folders is decoded once; its windows go through the reference ("graph",
the converted fp32 graph, whole) and through each candidate variant of the card (the FFT front end,
a quantised model ...), with the card's head and thresholds, as classify runs them. A candidate passes
when, on every clip, the alert decision of every threat class is the same as the reference's, at the
balanced and at the quiet operating point, and each class's clip AUC moves by at most MAX_AUC_DELTA.
Also reported: the embedding cosine and top-1 label agreement per window (windows with signal).

It reads the head and thresholds from the card each time, so after a retrained head is merged the gate
is simply run again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_AUC_DELTA = 0.005
MIN_EMBEDDING_COSINE = 0.9999


@dataclass
class _Tally:
    """One variant's figures over all clips."""

    seconds: float = 0.0
    windows: int = 0
    top1_agree: int = 0
    top1_differences: list[dict[str, Any]] = field(default_factory=list)
    min_cos: float = 1.0
    cos: list[float] = field(default_factory=list)
    differences: list[dict[str, Any]] = field(default_factory=list)
    scores: list[Any] = field(default_factory=list)  # ClipScore per clip (balanced)


def _clip_windows(path: Path, card: Any) -> tuple[list[tuple[float, np.ndarray]], float]:
    from sentinela.adapters.audio import windows
    from sentinela.domain.activity import MIN_SAMPLE_RATE

    wins = windows(path, sample_rate=card.sample_rate, window=card.window_samples, hop=card.hop_samples)
    audible = wins.info.sample_rate >= MIN_SAMPLE_RATE
    # As classify_source: a file below MIN_SAMPLE_RATE reaches the model as silence.
    out = [(s, w if audible else np.zeros_like(w)) for s, w in wins]
    return out, wins.info.duration_s


def _run(model: Any, cards: dict[str, Any], wins: list[tuple[float, np.ndarray]], duration: float,
         batch: int) -> tuple[dict[str, dict[str, bool]], dict[str, float], np.ndarray, np.ndarray, np.ndarray, float]:
    from sentinela.domain.detect import Detector

    dets = {point: Detector.for_model(model, c) for point, c in cards.items()}
    emb, top, signal = [], [], []
    t0 = time.perf_counter()
    for b in model.run(iter(wins), batch_size=batch):
        for d in dets.values():
            d.add(b)
        emb.append(b.embedding if b.embedding is not None else np.zeros((len(b.starts), 1), np.float32))
        top.append(b.scores.argmax(axis=1))
        signal.append(b.signal if b.signal is not None else np.ones(len(b.starts), bool))
    seconds = time.perf_counter() - t0
    results = {point: d.finish(duration) for point, d in dets.items()}
    decisions = {point: {x.threat: x.alert for x in r.decisions} for point, r in results.items()}
    max_scores = {k: float(v) for k, v in results["balanced"].max_scores.items()}
    return decisions, max_scores, np.concatenate(emb), np.concatenate(top), np.concatenate(signal), seconds


def gate(dirs: list[str], card_path: str, candidates: list[str] | None, threads: int | None, batch: int,
         say: Any = print) -> dict[str, Any]:
    from sentinela.adapters.audio import AudioError
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import at_operating_point, load_card, variants, with_variant
    from sentinela_tools.evaluate import ClipScore, clip_metrics, scan_dataset

    base = load_card(card_path)
    names = candidates or [v for v in variants(base) if v != "graph"]
    models = {"graph": BirdNetOnnx(with_variant(base, "graph"), threads=threads, embeddings=True)}
    for name in names:
        models[name] = BirdNetOnnx(with_variant(base, name), threads=threads, embeddings=True)
    thresholds = {t: r.alert for t, r in base.threats.items()}
    classes = tuple(base.threats)
    report: dict[str, Any] = {"card": card_path, "head": None if base.head is None else base.head.path.name,
                              "thresholds": thresholds, "quiet": {t: r.quiet for t, r in base.threats.items()},
                              "criteria": {"alert_decisions": "identical on every clip, balanced and quiet",
                                           "max_auc_delta": MAX_AUC_DELTA},
                              "load_at_start": list(os.getloadavg()), "folders": {}}
    say(f"quantgate: reference 'graph' vs {', '.join(names) or '(no candidate variant built)'}; "
        f"head {report['head']}; load {os.getloadavg()[0]:.2f}")
    overall = {n: True for n in names}
    for folder in dirs:
        clips = scan_dataset(folder)
        tallies = {n: _Tally() for n in models}
        skipped = []
        for k, clip in enumerate(clips):
            try:
                wins, duration = _clip_windows(clip.path, base)
            except (AudioError, OSError) as exc:
                skipped.append({"file": clip.rel, "reason": str(exc)})
                continue
            ref = None
            for name, model in models.items():
                cards = {"balanced": model.card, "quiet": at_operating_point(model.card, "quiet")}
                dec, mx, emb, top, sig, secs = _run(model, cards, wins, duration, batch)
                t = tallies[name]
                t.seconds += secs
                t.scores.append(ClipScore(clip.rel, clip.label, duration, mx, dec["balanced"]))
                if ref is None:
                    ref = (dec, emb, top, sig)
                    continue
                rdec, remb, rtop, rsig = ref
                both = sig & rsig
                t.windows += int(both.sum())
                t.top1_agree += int((top[both] == rtop[both]).sum())
                for i in np.flatnonzero(both & (top != rtop))[:5]:
                    t.top1_differences.append({"file": clip.rel, "window": int(i),
                                               "graph": model.card.labels[int(rtop[i])],
                                               name: model.card.labels[int(top[i])]})
                if both.any():
                    c = np.sum(emb[both] * remb[both], axis=1) / np.maximum(
                        np.linalg.norm(emb[both], axis=1) * np.linalg.norm(remb[both], axis=1), 1e-30)
                    t.min_cos = min(t.min_cos, float(c.min()))
                    t.cos.extend(c.tolist())
                for point in ("balanced", "quiet"):
                    diff = {c_: {"graph": rdec[point][c_], name: dec[point][c_]}
                            for c_ in rdec[point] if rdec[point][c_] != dec[point][c_]}
                    if diff:
                        t.differences.append({"file": clip.rel, "operating_point": point, "classes": diff})
            if (k + 1) % 50 == 0:
                say(f"  {folder}: {k + 1}/{len(clips)} clips, load {os.getloadavg()[0]:.2f}")
        ref_auc = _aucs(tallies["graph"].scores, classes)
        ref_metrics = clip_metrics(tallies["graph"].scores, thresholds, classes)
        fold: dict[str, Any] = {"clips": len(tallies["graph"].scores), "skipped": skipped,
                                "graph": {"auc": ref_auc, "macro_recall": ref_metrics["macro_recall"],
                                          "model_seconds": round(tallies["graph"].seconds, 2)}}
        say(f"\n{folder}: {fold['clips']} clips ({len(skipped)} unreadable)")
        say(f"  {'variant':<10} {'decisions differ':>16} {'max |ΔAUC|':>11} {'min cos':>9} {'top-1':>13} "
            f"{'model s':>8}  verdict")
        say(f"  {'graph':<10} {'-':>16} {'-':>11} {'-':>9} {'-':>13} {tallies['graph'].seconds:8.1f}  reference")
        for name in names:
            t = tallies[name]
            auc = _aucs(t.scores, classes)
            deltas: dict[str, float | None] = {}
            for c in classes:
                a, r = auc[c], ref_auc[c]
                deltas[c] = None if a is None or r is None else round(a - r, 6)
            worst = max((abs(d) for d in deltas.values() if d is not None), default=0.0)
            passed = not t.differences and worst <= MAX_AUC_DELTA
            overall[name] = overall[name] and passed
            fold[name] = {"decision_differences": t.differences, "auc": auc, "auc_delta": deltas,
                          "max_abs_auc_delta": worst, "windows_with_signal": t.windows,
                          "top1_agree": t.top1_agree, "top1_differences": t.top1_differences,
                          "embedding_min_cosine": t.min_cos,
                          "embedding_cosine_p001": float(np.quantile(t.cos, 0.001)) if t.cos else None,
                          "macro_recall": clip_metrics(t.scores, thresholds, classes)["macro_recall"],
                          "model_seconds": round(t.seconds, 2), "passed": passed}
            say(f"  {name:<10} {len(t.differences):>16} {worst:>11.4f} {t.min_cos:>9.6f} "
                f"{t.top1_agree:>6}/{t.windows:<6} {t.seconds:8.1f}  {'PASS' if passed else 'FAIL'}")
            for d in t.differences[:10]:
                say(f"    differs: {d['file']} ({d['operating_point']}): {d['classes']}")
            for d in t.top1_differences[:5]:
                say(f"    top-1 differs: {d['file']} window {d['window']}: {d['graph']} / {d[name]}")
        say("  AUC per class (graph / " + " / ".join(names) + "): " + ", ".join(
            f"{c} {_fmt(ref_auc[c])}/" + "/".join(_fmt(fold[n]['auc'][c]) for n in names) for c in classes))
        report["folders"][folder] = fold
    report["passed"] = overall
    report["load_at_end"] = list(os.getloadavg())
    say("\nverdict: " + (", ".join(f"{n} {'PASS' if ok else 'FAIL'}" for n, ok in overall.items()) or "nothing to gate")
        + f"  (load {os.getloadavg()[0]:.2f})")
    return report


def _aucs(scores: list[Any], classes: tuple[str, ...]) -> dict[str, float | None]:
    """Clip AUC per class (one class against every other clip), unrounded: the gate is at 0.005."""
    from sentinela_tools.evaluate import roc_auc

    return {c: roc_auc([s.max_scores.get(c, 0.0) for s in scores if s.label == c],
                       [s.max_scores.get(c, 0.0) for s in scores if s.label != c]) for c in classes}


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def cmd_quantgate(args: argparse.Namespace) -> int:
    from sentinela.adapters.model import ModelError
    from sentinela.config import default_card_path
    from sentinela.domain.card import CardError
    from sentinela_tools.evaluate import DatasetError

    try:
        # With --json, stdout is the JSON alone; the table goes to stderr.
        say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
        report = gate(args.dirs, str(args.card or default_card_path()), args.variant, args.threads, args.batch, say)
    except (CardError, ModelError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(text, encoding="utf-8")
        print(f"wrote {args.json_out}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(report)
    return 0 if all(report["passed"].values()) else 1


def register(subparsers: Any) -> None:
    g = subparsers.add_parser(
        "quantgate", help="may a faster model variant (FFT front end, quantised) replace the fp32 graph?",
        description="Run every clip of the labelled folders through the whole fp32 graph and each model "
                    "variant of the card, with the card's head and thresholds; a variant passes when every "
                    "clip's alert decisions are identical (balanced and quiet) and every class's AUC moves "
                    f"by at most {MAX_AUC_DELTA}. Exit 0 when all pass, 1 when one fails, 2 on errors.",
    )
    g.add_argument("dirs", nargs="+", help="folders with <label>/ sub-folders")
    g.add_argument("--card", help="model card (default models/card.json)")
    g.add_argument("--variant", action="append", help="variant to gate (default: every variant built)")
    # The CLI's convention: --json prints JSON on stdout, --json-out PATH writes it to a file.
    g.add_argument("--json", action="store_true", help="print the report as JSON on stdout (the table goes to stderr)")
    g.add_argument("--json-out", help="write the report as JSON to this file")
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--batch", type=int, default=8)
    g.set_defaults(fn=cmd_quantgate)
