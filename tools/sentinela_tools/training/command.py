"""`sentinela train DIR [DIR ...]`: embed, evaluate cross-source, fit the committed recipe, write the head,
its report and the card."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sentinela.domain.card import CardError, load_card
from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND, LABELS, DatasetError, manifest_hash
from sentinela_tools.progress import log
from sentinela_tools.training import crosssource
from sentinela_tools.training.data import load_folders
from sentinela_tools.training.embed import TrainError, build_mixes, embed_all, embedding_model, model_key
from sentinela_tools.training.export import check_onnx, head_onnx_bytes, update_card
from sentinela_tools.training.fit import HEAD_CLASSES, Blend, Prior, base_rows, fit_head
from sentinela_tools.training.recipe import BASELINE, COMMITTED, NON_BIRD_LOGITS, Recipe, variants
from sentinela_tools.training.report import background_alerting, findings, render, render_variants, summary
from sentinela_tools.training.thresholds import choose_thresholds, quiet_thresholds

SEED = 20240
REPRODUCIBILITY = (
    "Fixed seeds (the mixes) and one BLAS thread while fitting: given the same embeddings the head is a "
    "bit-for-bit deterministic function of them. The embeddings come from onnxruntime (cached per file "
    "under `.cache/embeddings/`) and can differ in the last bits between machines or thread counts. The "
    "report holds no timings, so a re-run rewrites it unchanged."
)
VARIANTS_FILE = "TRAINING_VARIANTS.md"


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _operating(oof: np.ndarray, labels: list[str], thr: dict[str, float]) -> dict[str, dict[str, Any]]:
    lab = np.asarray(labels)
    out: dict[str, dict[str, Any]] = {}
    for j, c in enumerate(THREAT_CLASSES):
        pos, bg = oof[lab == c, j], oof[lab == BACKGROUND, j]
        hit = oof[:, j] >= thr[c]
        tp, fp = int(hit[lab == c].sum()), int(hit[lab != c].sum())
        out[c] = {"recall": round(float((pos >= thr[c]).mean()), 4) if len(pos) else None,
                  "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                  "background_alerting": round(float((bg >= thr[c]).mean()), 4) if len(bg) else None}
    return out


def run_training(args: argparse.Namespace) -> int:
    from threadpoolctl import threadpool_limits

    from sentinela.adapters.model import ModelError
    from sentinela.config import default_card_path

    t0 = time.perf_counter()
    card_path = Path(args.card) if args.card else default_card_path()
    try:
        clips = load_folders(args.dirs)
        card = load_card(card_path)
        if card.threat_classes != THREAT_CLASSES:
            raise CardError(f"{card_path} names the classes {', '.join(card.threat_classes)}; the tools train "
                            f"those of models/card.json ({', '.join(THREAT_CLASSES)}): add a class there")
        model = embedding_model(card, args.threads)
    except (DatasetError, CardError, ModelError, TrainError, ValueError) as exc:
        return _err(str(exc))
    out = Path(args.out) if args.out else card_path.parent / "threat_head.onnx"
    cache = None if args.no_cache else Path(args.cache) / model_key(card)
    recipes = {"committed": COMMITTED, **(variants() if args.variants else {})}
    bandlimit = any(r.bandlimit for r in recipes.values())
    log(f"{len(clips)} clips in {len(args.dirs)} folder(s)")
    import tempfile

    from sentinela_tools.progress import native_stderr_to

    decoder_log = Path(tempfile.gettempdir()) / "sentinela-train-decoder.log"
    decoder_log.unlink(missing_ok=True)
    with native_stderr_to(decoder_log):  # libmpg123 complains on fd 2 about every odd MP3 frame
        data, skipped = embed_all(model, list(clips), cache, bandlimit)
        mix_n = max((r.mixes_per_clip for r in recipes.values()), default=0)
        mixes = build_mixes(model, data, HEAD_CLASSES, cache, mix_n, (0.0, 20.0), SEED) if mix_n and data else None
    if decoder_log.exists() and decoder_log.stat().st_size:
        log(f"(decoder warnings: {decoder_log})")
    present = {e.label for e in data}
    if BACKGROUND not in present or len(present) < 2:
        return _err(f"need readable background clips and at least one threat class; have {sorted(present)}")
    # One BLAS thread: reproducible reductions, and on a shared 2-core machine no slower. scipy's BLAS is
    # loaded first: threadpoolctl limits only the libraries already loaded.
    import scipy.optimize  # noqa: F401
    import sklearn.linear_model  # noqa: F401

    labels = [e.label for e in data]
    files = [e.clip.rel for e in data]
    all_rows = base_rows(card, NON_BIRD_LOGITS)

    def prior_for(r: Recipe) -> Prior | None:
        if all_rows is None or not r.logit_labels:
            return None
        cols = [all_rows.labels.index(lab) for lab in r.logit_labels]
        return Prior(r.logit_labels, all_rows.w[:, cols], all_rows.b[cols])

    blend_rows = base_rows(card, [card.threats[c].model_labels[0] for c in THREAT_CLASSES
                                  if c in card.threats and card.threats[c].model_labels])
    if blend_rows is not None and len(blend_rows.labels) != len(THREAT_CLASSES):
        blend_rows = None
    if COMMITTED.logit_labels and all_rows is None:
        log("the base model's logits are not a dense layer on its embedding: the head uses the embedding alone")
    with threadpool_limits(limits=1):
        rows: dict[str, crosssource.CrossSource] = {}
        rows["committed"] = crosssource.run(data, mixes, COMMITTED, "cross-source: committed recipe",
                                            prior_for(COMMITTED), blend_rows)
        rows["baseline"] = crosssource.run(data, mixes, BASELINE, "cross-source: baseline")
        zs = crosssource.zero_shot(data)
        extra: dict[str, crosssource.CrossSource] = {}
        if args.variants:
            for name, r in recipes.items():
                if name != "committed":
                    extra[name] = crosssource.run(data, mixes, r, f"cross-source: {name}", prior_for(r), blend_rows)
        com = rows["committed"]
        thr = choose_thresholds(com.oof, labels)
        qthr = quiet_thresholds(com.oof, labels, thr)
        stats: dict[str, Any] = {}
        head = fit_head(data, list(range(len(data))), mixes, COMMITTED, stats, prior_for(COMMITTED))
        if com.blend is not None and blend_rows is not None:
            a = np.array([com.blend[c] for c in THREAT_CLASSES])
            head = replace(head, blend=Blend(a, blend_rows.w, blend_rows.b))
    blob = head_onnx_bytes(head)
    diff = check_onnx(blob, head, np.concatenate([e.emb for e in data]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    shas = {e.clip.rel: e.sha256 for e in data}
    per_label = {lab: labels.count(lab) for lab in LABELS}
    command = ("SENTINELA_THREADS=2 .venv/bin/sentinela train " + " ".join(str(d) for d in args.dirs)
               + (f" --out {args.out}" if args.out else "") + (f" --card {args.card}" if args.card else ""))
    cs_rows: dict[str, Any] = {"committed": summary(com), "baseline": summary(rows["baseline"]),
                               "zero-shot (the base model's own labels)": summary(zs)}
    report: dict[str, Any] = {
        "generated_by": "sentinela train",
        "command": command,
        "reproducibility": REPRODUCIBILITY,
        "data": {"dirs": [str(d) for d in args.dirs], "clips": len(data), "per_label": per_label,
                 "per_folder": {f: sum(1 for e in data if e.folder == f) for f in sorted({e.folder for e in data})},
                 "sources": len({e.source for e in data}), "groups": len({e.clip.group for e in data}),
                 "manifest_sha256": manifest_hash([c for _, c in clips], shas), "skipped": skipped,
                 "windows": int(sum(len(e.emb) for e in data)),
                 "signal_windows": int(sum(int(e.signal.sum()) for e in data)),
                 "bandlimited_windows": 0 if not COMMITTED.bandlimit else
                 int(sum(len(v) for e in data for v in e.bandlimited.values())),
                 "mixes": 0 if mixes is None or not COMMITTED.needs_mixes else len(mixes.emb)},
        "base_model": {"id": card.id, "key": model_key(card)},
        "head": {"path": out.name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(),
                 "classes": list(HEAD_CLASSES), "graph": head.describe(), "onnx_max_abs_diff": diff,
                 "kind": ("A multinomial logistic regression" if head.softmax else "One-vs-rest logistic regressions")
                 + (", blended per class with BirdNET's own label," if head.blend is not None else ""),
                 "final_fit": stats},
        "recipe": json.dumps(COMMITTED.describe()),
        "thresholds": thr,
        "quiet_thresholds": qthr,
        "operating_points": _operating(com.oof, labels, thr),
        "quiet_operating_points": _operating(com.oof, labels, qthr),
        "cross_source": cs_rows,
        "background_alerting": background_alerting(com, files, labels),
        "blend": None if com.blend is None else {
            "head_share": com.blend, "base_labels": None if blend_rows is None else list(blend_rows.labels),
            "held_out_choices": com.blend_range},
        "variants_file": VARIANTS_FILE if (args.variants or (out.parent / VARIANTS_FILE).is_file()) else None,
        "clip_sources": {e.clip.rel: [e.source, e.clip.group] for e in data},
    }
    report["findings"] = findings(report)
    (out.parent / "training_report.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out.parent / "TRAINING_REPORT.md").write_text(render(report), encoding="utf-8")
    if args.variants:
        vrows = {name: summary(cs) for name, cs in
                 {"committed": com, "baseline": rows["baseline"], "zero-shot": zs, **extra}.items()}
        (out.parent / VARIANTS_FILE).write_text(render_variants(report, vrows), encoding="utf-8")
    try:
        update_card(card_path, out, thr, report["operating_points"], qthr, report["quiet_operating_points"])
    except (OSError, ValueError) as exc:
        return _err(f"could not update the card {card_path}: {exc}")
    c = cs_rows["committed"]
    b = cs_rows["baseline"]
    result = {"head": str(out), "sha256": report["head"]["sha256"], "seconds": round(time.perf_counter() - t0, 1),
              "thresholds": thr, "quiet_thresholds": qthr,
              "cross_source": {k: {m: v[m] for m in ("min_auc", "macro_recall", "accuracy",
                                                     "background_false_alarm_rate")}
                               for k, v in (("committed", c), ("baseline", b))},
              "skipped": skipped}
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(result)
        return 0
    print(f"wrote {out} ({len(blob)} bytes, sha256 {report['head']['sha256'][:16]}), "
          f"{out.parent / 'TRAINING_REPORT.md'}, updated {card_path} ({time.perf_counter() - t0:.0f} s)")
    for name, s in (("committed", c), ("baseline", b)):
        print(f"cross-source {name:9s}: min AUC {s['min_auc']}, macro recall {s['macro_recall']}, "
              f"accuracy {s['accuracy']}, background alerting {s['background_false_alarm_rate']}")
    print("thresholds " + ", ".join(f"{k} {v}" for k, v in thr.items()))
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): " + ", ".join(s["file"] for s in skipped))
    return 0


def register(subparsers: Any) -> None:
    t = subparsers.add_parser(
        "train", help="train the threat head on labelled folders (<label>/ clips)",
        description=f"Train the threat head on DIR/<label>/ clips (labels: {', '.join(LABELS)}) of one or more "
                    "folders, evaluate it cross-source (leave one source dataset out; folder to folder), choose "
                    "the alert thresholds on the cross-source scores, and write the head ONNX, its report, and "
                    "the head and thresholds into the model card.",
    )
    t.add_argument("dirs", nargs="+", metavar="DIR", help="folders with <label>/ sub-folders (and a MANIFEST.csv "
                                                           "naming each clip's source_repo, when there is one)")
    t.add_argument("--out", help="head ONNX to write (default: threat_head.onnx beside the card); the report "
                                 "is written beside it")
    t.add_argument("--card", help="model card to read the base model from and to update (default models/card.json)")
    t.add_argument("--cache", default=".cache/embeddings", help="embedding cache folder (default .cache/embeddings)")
    t.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--variants", action="store_true",
                   help=f"also measure every recipe variant cross-source and write {VARIANTS_FILE} (slow)")
    t.add_argument("--json", action="store_true", help="print the result as JSON to stdout")
    t.set_defaults(fn=run_training)


__all__ = ["Recipe", "register", "run_training"]
