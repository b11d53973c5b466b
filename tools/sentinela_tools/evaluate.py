"""`sentinela eval DIR`: score labelled folders through the production path and report clip metrics.

Every clip goes through :func:`sentinela.services.classify.classify_source` (the code the classify Lambda runs),
so the figures measure what production does: the clip score of a class is the highest window score
(``ClipResult.max_scores``) and a class alerts when the card's rule says so (``ClipResult.decisions``:
enough windows at or above its alert threshold).

The labelled-folder scan, the grouping of clips by source recording and the metric definitions live
here too; ``sentinela train`` uses the same ones for its cross-validation, so training and evaluation
cannot disagree on what "recall" or "false alarms per hour" mean.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sentinela.domain.card import BACKGROUND as BACKGROUND  # the head's no-threat column: the label folder too
from sentinela_tools.classes import THREAT_CLASSES

LABELS: tuple[str, ...] = (*THREAT_CLASSES, BACKGROUND)


class DatasetError(ValueError):
    """A labelled folder that cannot be used; the message says what to change."""


@dataclass(frozen=True)
class LabelledClip:
    rel: str  # path relative to the dataset root, with "/" separators
    path: Path
    label: str
    group: str  # source recording: clips of one recording share it and never straddle CV folds
    # source dataset (the manifest's source_repo, one name for the copies of one public set): a whole
    # source is held out at once in cross-source evaluation, since it brings its own recorders and places
    source: str = ""


@dataclass(frozen=True)
class ClipScore:
    """One clip as the pipeline saw it: its clip score per threat class and which classes alerted."""

    rel: str
    label: str
    duration_s: float
    max_scores: dict[str, float]
    alerts: dict[str, bool]


# Naming schemes of public sets in which one source recording yields several files: the clips of one
# recording must fall in one fold, or cross-validation measures memory instead of hearing.
_GROUP_PATTERNS = (
    (re.compile(r"^(\d+)-\d+-\d+-\d+$"), "fs"),  # UrbanSound8K: fsID-classID-occurrence-slice
    (re.compile(r"^\d-(\d+)-[A-Z]$"), "fs"),  # ESC-10/50: fold-fsID-take
    (re.compile(r"^\d+_([A-Za-z]+)_\d+$"), "speaker"),  # free-spoken-digit: digit_speaker_take
    (re.compile(r"^(S4A\d+)_\d{8}_\d{6}$"), "device"),  # Song Meter: one recorder, one site
    (re.compile(r"^(.*?)_t\d+-\d+$"), "cut"),  # our own cuts of a long recording: name_tSTART-END
)


def group_key(stem: str) -> str:
    """The source recording of a file stem (``103258-5-0-11`` -> ``fs103258``)."""
    for pattern, prefix in _GROUP_PATTERNS:
        m = pattern.match(stem)
        if m:
            return f"{prefix}:{m.group(1)}"
    return stem


# One public dataset published in several repositories is one source: holding out one copy while
# training on the other would leak its recorders, its editing and sometimes its very recordings.
SOURCE_ALIASES = {
    "EmanueleMusumeci/UrbanSound8K-CNN-sound-classification": "UrbanSound8K",
    "Alejandro-131004/AC-II": "UrbanSound8K",  # the set holds only its UrbanSound8K copies
    "karolpiczak/ESC-10": "ESC-50",  # ESC-10 is a subset of ESC-50
    "caitlinnguyen0/ESC-50": "ESC-50",
}


def source_dataset(source_repo: str) -> str:
    return SOURCE_ALIASES.get(source_repo, source_repo)


def _manifest_groups(root: Path) -> dict[str, tuple[str, str]]:
    """file -> (group, source dataset), from MANIFEST.csv's source_repo and source_path stem."""
    manifest = root / "MANIFEST.csv"
    if not manifest.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    with manifest.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rel, src = row.get("file"), row.get("source_path")
            if not rel or not src:
                continue
            stem = Path(src.split("#", 1)[0]).stem
            source = source_dataset(row.get("source_repo", "") or "")
            out[rel] = (f"{source}/{group_key(stem)}", source)
    return out


def scan_dataset(root: str | Path) -> list[LabelledClip]:
    """The clips of ``root/<label>/``; other folder names are an error that lists the allowed ones."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"{base} is not a folder (expected <label>/ folders: {', '.join(LABELS)})")
    folders = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    bad = [p.name for p in folders if p.name not in LABELS]
    if bad:
        raise DatasetError(
            f"unknown label folder(s) {', '.join(bad)} in {base}; allowed: {', '.join(LABELS)}")
    groups = _manifest_groups(base)
    clips: list[LabelledClip] = []
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(base).parts):
                continue
            rel = path.relative_to(base).as_posix()
            # Without a manifest the folder itself is the source: all it is known to share.
            group, source = groups.get(rel) or (f"{folder.name}/{group_key(path.stem)}", base.name)
            clips.append(LabelledClip(rel, path, folder.name, group, source))
    if not clips:
        raise DatasetError(f"no clips under {base} (expected <label>/ folders: {', '.join(LABELS)})")
    return clips


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_hash(clips: Sequence[LabelledClip], shas: Mapping[str, str]) -> str:
    """sha256 over the sorted ``relative path  file sha256`` lines: names the exact data a head saw."""
    lines = sorted(f"{c.rel}  {shas[c.rel]}" for c in clips if c.rel in shas)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --- metrics --------------------------------------------------------------------------------------


def roc_auc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Mann-Whitney estimate of ROC AUC (ties count half); None when a side is empty."""
    if not pos or not neg:
        return None
    p = np.asarray(pos, dtype=np.float64)
    n = np.asarray(neg, dtype=np.float64)
    allv = np.concatenate((p, n))
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv), dtype=np.float64)
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):  # average ranks over ties
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_pos = ranks[: len(p)].sum()
    return float((r_pos - len(p) * (len(p) + 1) / 2.0) / (len(p) * len(n)))


def _logit(x: float) -> float:
    x = min(max(x, 1e-6), 1 - 1e-6)
    return math.log(x / (1 - x))


def six_way(score: ClipScore, thresholds: Mapping[str, float]) -> str:
    """``background`` when no class alerts; otherwise the alerting class whose score clears its own
    threshold by the widest margin in log-odds (logit(score) - logit(alert)): thresholds differ per
    class, so raw scores are not comparable, and a ratio would overweight low thresholds."""
    alerting = [c for c, a in score.alerts.items() if a]
    if not alerting:
        return BACKGROUND
    return max(alerting, key=lambda c: (_logit(score.max_scores[c]) - _logit(thresholds[c]), c))


def clip_metrics(
    scores: Sequence[ClipScore], thresholds: Mapping[str, float], classes: Sequence[str] = THREAT_CLASSES
) -> dict[str, Any]:
    """Per-class n, AUC, precision and recall at the alert rule; the 6-way confusion matrix and accuracy;
    background false alarms (fraction of background clips that alert, and per hour of background audio);
    macro recall over the threat classes present."""
    labels = [*classes, BACKGROUND]
    per: dict[str, dict[str, Any]] = {}
    for c in classes:
        pos = [s.max_scores.get(c, 0.0) for s in scores if s.label == c]
        neg = [s.max_scores.get(c, 0.0) for s in scores if s.label != c]
        tp = sum(1 for s in scores if s.label == c and s.alerts.get(c, False))
        fp = sum(1 for s in scores if s.label != c and s.alerts.get(c, False))
        auc = roc_auc(pos, neg)
        per[c] = {
            "n": len(pos),
            "auc": None if auc is None else round(auc, 4),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / len(pos), 4) if pos else None,
            "alert": round(float(thresholds[c]), 4),
        }
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for s in scores:
        if s.label in confusion:
            confusion[s.label][six_way(s, thresholds)] += 1
    n_known = sum(sum(row.values()) for row in confusion.values())
    correct = sum(confusion[c][c] for c in labels)
    bg = [s for s in scores if s.label == BACKGROUND]
    bg_alerting = sum(1 for s in bg if any(s.alerts.values()))
    bg_hours = sum(s.duration_s for s in bg) / 3600.0
    recalls = [per[c]["recall"] for c in classes if per[c]["recall"] is not None]
    return {
        "n_clips": len(scores),
        "classes": per,
        "accuracy": round(correct / n_known, 4) if n_known else None,
        "macro_recall": round(float(np.mean(recalls)), 4) if recalls else None,
        "background_clips": len(bg),
        "background_hours": round(bg_hours, 4),
        "background_alerting_clips": bg_alerting,
        "background_false_alarm_rate": round(bg_alerting / len(bg), 4) if bg else None,
        "false_alarms_per_hour": round(bg_alerting / bg_hours, 2) if bg_hours > 0 else None,
        "confusion_labels": labels,
        "confusion": confusion,
    }


def format_metrics(m: Mapping[str, Any]) -> str:
    lines = [f"{'class':<12} {'n':>4} {'AUC':>6} {'prec':>6} {'recall':>6} {'alert':>6}"]
    for c, v in m["classes"].items():
        def f(x: Any) -> str:
            return "   -  " if x is None else f"{x:6.3f}"
        lines.append(
            f"{c:<12} {v['n']:>4} {f(v['auc'])} {f(v['precision'])} {f(v['recall'])} {f(v['alert'])}")
    labels = m["confusion_labels"]
    lines.append("")
    lines.append("confusion (rows: truth, columns: decision)")
    lines.append(" " * 12 + "".join(f"{lab[:7]:>8}" for lab in labels))
    for t in labels:
        lines.append(f"{t:<12}" + "".join(f"{m['confusion'][t][p]:>8}" for p in labels))
    lines.append("")

    def g(x: Any, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    lines.append(f"six-way accuracy {g(m['accuracy'])}; macro recall (threats) {g(m['macro_recall'])}")
    lines.append(
        f"background: {m['background_alerting_clips']} of {m['background_clips']} clips alert "
        f"(rate {g(m['background_false_alarm_rate'])}); {g(m['false_alarms_per_hour'], '.1f')} false alarms "
        f"per hour of background audio ({m['background_hours'] * 60:.1f} min)"
    )
    return "\n".join(lines)


# --- plots ------------------------------------------------------------------------------------------


def pr_curve(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """(recall, precision) points as the threshold sweeps down through every score."""
    pts = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg], key=lambda t: -t[0])
    tp = fp = 0
    rec: list[float] = [0.0]
    prec: list[float] = [1.0]
    for _, y in pts:
        tp += y
        fp += 1 - y
        rec.append(tp / max(1, len(pos)))
        prec.append(tp / (tp + fp))
    return rec, prec


def write_plots(
    scores: Sequence[ClipScore], metrics: Mapping[str, Any], out_dir: Path, title: str
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(metrics["confusion_labels"])
    mat = np.array([[metrics["confusion"][t][p] for p in labels] for t in labels], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.imshow(mat / np.maximum(mat.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(mat[i, j])), ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("decision")
    ax.set_ylabel("truth")
    ax.set_title(f"{title}: six-way accuracy {metrics['accuracy']}")
    fig.tight_layout()
    cm_path = out_dir / "confusion_matrix.png"
    fig.savefig(cm_path, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for c, v in metrics["classes"].items():
        pos = [s.max_scores.get(c, 0.0) for s in scores if s.label == c]
        neg = [s.max_scores.get(c, 0.0) for s in scores if s.label != c]
        if not pos:
            continue
        rec, prec = pr_curve(pos, neg)
        (line,) = ax.plot(rec, prec, label=f"{c} (AUC {v['auc']})")
        if v["recall"] is not None and v["precision"] is not None:
            ax.plot([v["recall"]], [v["precision"]], "o", color=line.get_color())
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title}: clip-level PR curves (dot = alert threshold)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    pr_path = out_dir / "pr_curves.png"
    fig.savefig(pr_path, dpi=120)
    plt.close(fig)
    return [cm_path, pr_path]


# --- the command ------------------------------------------------------------------------------------


@dataclass
class EvalRun:
    scores: list[ClipScore] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    shas: dict[str, str] = field(default_factory=dict)


def score_clips(clips: Sequence[LabelledClip], model: Any, batch_size: int = 8) -> EvalRun:
    """Each clip through classify_source; unreadable ones are recorded with their reason and skipped."""
    from sentinela.adapters.audio import AudioError
    from sentinela.services.classify import classify_source
    from sentinela_tools.progress import Stage

    run = EvalRun()
    prog = Stage(len(clips), "scoring clips")  # a bar with an ETA on a terminal, a line now and then in logs
    for clip in clips:
        prog.step()
        try:
            out = classify_source(clip.path, model, batch_size=batch_size)
        except AudioError as exc:
            run.skipped.append({"file": clip.rel, "reason": exc.reason})
            print(f"skipped {clip.rel}: {exc.reason}", file=sys.stderr)
            continue
        except OSError as exc:
            run.skipped.append({"file": clip.rel, "reason": str(exc)})
            print(f"skipped {clip.rel}: {exc}", file=sys.stderr)
            continue
        run.shas[clip.rel] = file_sha256(clip.path)
        alerts = {d.threat: d.alert for d in out.result.decisions}
        run.scores.append(ClipScore(clip.rel, clip.label, out.info.duration_s,
                                    {k: float(v) for k, v in out.result.max_scores.items()}, alerts))
    prog.close()
    return run


def _trained_on(head_path: Path) -> str | None:
    report = head_path.parent / "training_report.json"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("data", {}).get("manifest_sha256")
    return str(value) if value else None


def cmd_eval(args: argparse.Namespace) -> int:
    from sentinela.adapters.model import BirdNetOnnx, ModelError
    from sentinela.config import default_card_path
    from sentinela.domain.card import CardError, at_operating_point, load_card

    try:
        clips = scan_dataset(args.dir)
        card = at_operating_point(load_card(args.card or default_card_path()), args.operating_point)
        model = BirdNetOnnx(card, threads=args.threads)
    except (DatasetError, CardError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import tempfile

    from sentinela_tools.progress import native_stderr_to

    decoder_log = Path(tempfile.gettempdir()) / "sentinela-eval-decoder.log"
    decoder_log.unlink(missing_ok=True)
    with native_stderr_to(decoder_log):  # libmpg123 complains on fd 2 about every odd MP3 frame
        run = score_clips(clips, model, batch_size=args.batch)
    if decoder_log.exists() and decoder_log.stat().st_size:
        print(f"(decoder warnings: {decoder_log})", file=sys.stderr)
    if not run.scores:
        print("error: no readable clips to evaluate", file=sys.stderr)
        return 2
    thresholds = {t: r.alert for t, r in card.threats.items()}
    classes = tuple(card.threats)
    metrics = clip_metrics(run.scores, thresholds, classes)
    data_hash = manifest_hash(clips, run.shas)
    note = None
    if card.head is not None and _trained_on(card.head.path) == data_hash:
        note = ("these are the clips the head was trained on: figures are in-sample; the honest ones are the "
                "grouped cross-validation figures in the training report")
    result: dict[str, Any] = {
        "card": str(Path(args.card or default_card_path())),
        "model_id": card.model_id,  # as the records name it: base model, variant, head
        "head": None if card.head is None else card.head.path.name,
        "data": {"dir": str(args.dir), "manifest_sha256": data_hash, "clips": len(run.scores)},
        "operating_point": args.operating_point,
        "min_windows": {t: r.min_windows for t, r in card.threats.items()},
        **metrics,
        "skipped": run.skipped,
        "decision_rule": "a class alerts when >= min_windows windows score >= its alert threshold; a clip is "
                         "background when no class alerts, else the alerting class with the largest "
                         "logit(score) - logit(alert)",
    }
    if note:
        result["note"] = note
    print(format_metrics(metrics))
    if run.skipped:
        names = ", ".join(s["file"] for s in run.skipped)
        print(f"\nskipped {len(run.skipped)} unreadable file(s): {names}")
    if note:
        print(f"\nnote: {note}")
    if args.plots:
        for p in write_plots(run.scores, metrics, Path(args.plots), card.id):
            print(f"wrote {p}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json_out}")
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(result)
    return 0


def register(subparsers: Any) -> None:
    e = subparsers.add_parser(
        "eval", help="evaluate the configured model on labelled folders (<label>/ clips)",
        description=f"Score every clip of DIR/<label>/ (labels: {', '.join(LABELS)}) through the classify "
                    "path and report per-class AUC, precision and recall at the alert threshold, the six-way "
                    "confusion matrix, accuracy and background false alarms.",
    )
    e.add_argument("dir", help="folder with <label>/ sub-folders")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON to stdout")
    e.add_argument("--json-out", metavar="PATH", help="also write the metrics as JSON to this file")
    e.add_argument("--plots", help="write confusion_matrix.png and pr_curves.png into this folder")
    e.add_argument("--card", help="model card (default models/card.json)")
    e.add_argument("--operating-point", choices=("balanced", "quiet"), default="balanced",
                   help="the card's alert thresholds (balanced, default) or its quiet operating point's")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--batch", type=int, default=8)
    e.set_defaults(fn=cmd_eval)
