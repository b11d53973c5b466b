"""models/TRAINING_REPORT.md (and TRAINING_VARIANTS.md) from the training report's JSON. Every sentence that
states a result is computed from the figures; nothing here is printed whatever the data says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND
from sentinela_tools.training.crosssource import CrossSource

TARGETS = {"min_auc": 0.98, "macro_recall": 0.90, "background_false_alarm_rate": 0.03, "accuracy": 0.92}


def summary(cs: CrossSource) -> dict[str, Any]:
    h = cs.honest
    f2f = {k: (None if v is None else {
        "clips": v["n_clips"], "min_auc": v["min_auc"], "macro_recall": v["macro_recall"],
        "accuracy": v["accuracy"], "background_false_alarm_rate": v["background_false_alarm_rate"],
        "classes": {c: {"n": x["n"], "auc": x["auc"], "recall": x["recall"]} for c, x in v["classes"].items()},
        "left_out_shared_sources": v["left_out_shared_sources"]}) for k, v in cs.folder_to_folder.items()}
    return {
        "recipe": cs.recipe.describe(), "scheme": cs.scheme,
        "classes": h["classes"], "min_auc": h["min_auc"], "macro_recall": h["macro_recall"],
        "accuracy": h["accuracy"], "background_false_alarm_rate": h["background_false_alarm_rate"],
        "false_alarms_per_hour": h["false_alarms_per_hour"], "background_clips": h["background_clips"],
        "background_hours": h["background_hours"], "confusion": h["confusion"],
        "at_equal_recall": cs.matched, "per_source": cs.per_source, "folder_to_folder": f2f,
    }


def _f(x: Any, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def _row(name: str, s: Mapping[str, Any]) -> str:
    aucs = " | ".join(_f(s["classes"][c]["auc"]) for c in THREAT_CLASSES)
    return (f"| {name} | {aucs} | {_f(s['min_auc'])} | {_f(s['macro_recall'])} | "
            f"{_f(s['background_false_alarm_rate'])} ({_f(s['false_alarms_per_hour'], '.1f')}) | "
            f"{_f(s['accuracy'])} | {_f(s['at_equal_recall']['background_false_alarm_rate'])} |")


HEADER = ("| recipe | AUC " + " | ".join(THREAT_CLASSES) + " | min AUC | macro recall | "
          "background clips alerting (per h) | six-way accuracy | background alerting at recall 0.9 |\n"
          + "|---" * (len(THREAT_CLASSES) + 6) + "|")


def _f2f_rows(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    out = ["| recipe | direction | clips scored | min AUC | macro recall | background alerting | six-way accuracy |",
           "|---|---|---|---|---|---|---|"]
    for name, s in rows.items():
        for k, v in s["folder_to_folder"].items():
            if v is None:
                out.append(f"| {name} | {k} | 0 | – | – | – | – |")
                continue
            out.append(f"| {name} | {k} | {v['clips']} | {_f(v['min_auc'])} | {_f(v['macro_recall'])} | "
                       f"{_f(v['background_false_alarm_rate'])} | {_f(v['accuracy'])} |")
    return out


def findings(rep: Mapping[str, Any]) -> list[str]:
    rows = rep["cross_source"]
    com, base = rows["committed"], rows["baseline"]
    out: list[str] = []
    keys = (("min_auc", "min AUC", 1), ("macro_recall", "macro recall", 1), ("accuracy", "six-way accuracy", 1),
            ("background_false_alarm_rate", "background clips alerting", -1))
    better = [label for k, label, sign in keys
              if com[k] is not None and base[k] is not None and sign * (com[k] - base[k]) > 0]
    worse = [label for k, label, sign in keys
             if com[k] is not None and base[k] is not None and sign * (com[k] - base[k]) < 0]
    out.append(f"Against the plain baseline, cross-source: better on {', '.join(better) or 'nothing'}"
               + (f"; worse on {', '.join(worse)}" if worse else "") + ".")
    ce = com["at_equal_recall"]["background_false_alarm_rate"]
    be = base["at_equal_recall"]["background_false_alarm_rate"]
    if ce is not None and be is not None:
        ratio = ce / be if be else None
        out.append(f"At the same recall (0.9 in every class), {_f(ce)} of background clips alert with the committed "
                   f"head and {_f(be)} with the baseline" + (f" ({ratio:.2f}x)" if ratio is not None else "") + ".")
    missed = []
    for k, target in TARGETS.items():
        v = com[k]
        ok = v is not None and (v <= target if k == "background_false_alarm_rate" else v >= target)
        if not ok:
            missed.append(f"{k.replace('_', ' ')} {_f(v)} (target {'<=' if 'background' in k else '>='} {target})")
    out.append("Targets missed cross-source: " + "; ".join(missed) + "." if missed
               else "Every target is met cross-source.")
    weak = [c for c in THREAT_CLASSES if (com["classes"][c]["auc"] or 0) < TARGETS["min_auc"]]
    if weak:
        out.append("Classes below the AUC target: " + ", ".join(
            f"{c} {_f(com['classes'][c]['auc'])}" for c in weak) + ".")
    return out


def render(rep: Mapping[str, Any]) -> str:
    d = rep["data"]
    rows = rep["cross_source"]
    com = rows["committed"]
    lines = [
        "# Threat head: training report",
        "",
        f"{rep['head']['kind']} on BirdNET V2.4's 1024-d embedding, for the five threats and background. "
        "Generated by `sentinela train` (every line, the findings included). **Every figure below is "
        "cross-source**: measured on clips whose whole source dataset (recorders, places, editing) the head "
        "was not fitted on. Within-source cross-validation flattered the previous head (0.91 accuracy there, "
        "0.80 on recordings from elsewhere) and is not used for any choice.",
        "",
        f"- data: {', '.join(f'`{x}`' for x in d['dirs'])}: {d['clips']} clips ({d['per_label']}), "
        f"{d['sources']} source datasets, {d['groups']} source recordings; manifest sha256 `{d['manifest_sha256']}`",
        f"- rows: {d['windows']} production windows ({d['signal_windows']} with signal: the others score 0 in "
        f"classify and are left out), {d['bandlimited_windows']} band-limited copies, "
        f"{d['mixes']} mixes; skipped (unreadable): {len(d['skipped'])}",
        f"- base model: `{rep['base_model']['id']}`, `{rep['base_model']['key']}`",
        f"- head: `{rep['head']['path']}` ({rep['head']['bytes']} bytes, sha256 `{rep['head']['sha256']}`); graph "
        f"`{rep['head']['graph']}`, columns {', '.join(rep['head']['classes'])}; "
        f"|ONNX - numpy| <= {rep['head']['onnx_max_abs_diff']:.1e}",
        f"- recipe: `{rep['recipe']}`",
        *([f"- blend with BirdNET's own label (`{', '.join(rep['blend']['base_labels'] or [])}`), the head's share of "
           "each class's log-odds, chosen by cross-source ROC AUC over " + ", ".join(
               f"{c} {a:g}" for c, a in rep["blend"]["head_share"].items())
           + "; each held-out source's own choice ranged over " + ", ".join(
               f"{c} {'/'.join(f'{v:g}' for v in r)}" for c, r in rep["blend"]["held_out_choices"].items())]
          if rep.get("blend") else []),
        f"- evaluation: {com['scheme']} ({len(com['per_source'])} held-out units), then folder to folder",
        "",
        "## Reproduce",
        "",
        "```",
        rep["command"],
        "```",
        "",
        rep["reproducibility"],
        "",
        "## Findings",
        "",
        *[f"- {x}" for x in rep["findings"]],
        "",
        "## Cross-source figures (the headline)",
        "",
        "Leave one source dataset out over every folder: each source is held out whole, the recipe is fitted "
        "on the others, and the held-out clips are judged at thresholds chosen on the *other* sources' "
        "out-of-fold scores (nothing is chosen on the clips it is reported on). AUCs are threshold-free. The "
        "last column compares recipes at the same recall: per class the highest threshold that still finds "
        "90% of that class's clips, and the fraction of background clips that alert for any class there.",
        "",
        HEADER,
        *[_row(name, s) for name, s in rows.items()],
        "",
        "*baseline*: plain standardised logistic regression (scikit-learn's multinomial `LogisticRegression` "
        "with its defaults on standardised windows, every window labelled with its clip's label, no weights, no "
        "augmentation): the row every recipe has to beat. *zero-shot*: BirdNET's own labels for the threats "
        "(Gun, Power tools, Engine, Human vocal, Dog), no head.",
        "",
        "Targets (issue 11, on recordings never seen): every AUC >= 0.98, macro recall >= 0.90, at most 3% of "
        "background clips alert, six-way accuracy >= 0.92.",
        "",
        "### Folder to folder",
        "",
        "Fitted on one folder, scored on the other folder's clips from sources the first does not hold (shared "
        "sources are left out of the score); thresholds chosen on the fitting folder's own cross-source scores.",
        "",
        *_f2f_rows(rows),
        "",
        "### Per held-out source (committed recipe)",
        "",
        "Threat cells: clips that alerted for their own class / clips; background: clips that alerted for any "
        "class / clips. *unheard*: the held-out source holds every clip of that class, so the head had never "
        "heard it.",
        "",
        "| held-out source | " + " | ".join((*THREAT_CLASSES, BACKGROUND)) + " |",
        "|---|" + "---|" * (len(THREAT_CLASSES) + 1),
    ]
    totals = {c: sum(r[c][1] for r in com["per_source"].values()) for c in (*THREAT_CLASSES, BACKGROUND)}
    for src, r in sorted(com["per_source"].items()):
        cells = []
        for c in (*THREAT_CLASSES, BACKGROUND):
            hit, n = r[c]
            if not n:
                cells.append("")
            elif c != BACKGROUND and n == totals[c]:
                cells.append(f"*unheard* ({hit}/{n})")
            else:
                cells.append(f"{hit}/{n}")
        lines.append(f"| `{src}` | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Confusion, committed recipe (cross-source, honest thresholds)",
        "",
        "| truth \\ decision | " + " | ".join((*THREAT_CLASSES, BACKGROUND)) + " |",
        "|---|" + "---|" * (len(THREAT_CLASSES) + 1),
        *[f"| {t} | " + " | ".join(str(com["confusion"][t][p]) for p in (*THREAT_CLASSES, BACKGROUND)) + " |"
          for t in (*THREAT_CLASSES, BACKGROUND)],
        "",
        "Background clips that still alert (cross-source, honest thresholds): "
        + (", ".join(f"`{x['file']}` ({'/'.join(x['classes'])}, {x['score']:.2f})"
                     for x in rep["background_alerting"]) or "none") + ".",
        "",
        "## Thresholds (written into the card)",
        "",
        "Chosen on the leave-one-source-out out-of-fold clip scores of every clip: per class the middle (in "
        "log-odds) of the plateau of thresholds within 0.01 of the best `recall - 3 x background clips alerting "
        "- other-threat clips alerting`. Store thresholds are half the alert threshold. The quiet point (a "
        "site's policy can choose it: `threshold: quiet`) is per class the lowest threshold at which at most "
        "0.6% of background clips alert for it (3% summed over the five classes, an upper bound).",
        "",
        "| class | store | alert | quiet | recall (cross-source) | background clips alerting for it | quiet recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in THREAT_CLASSES:
        op, qop = rep["operating_points"][c], rep["quiet_operating_points"][c]
        lines.append(f"| {c} | {round(rep['thresholds'][c] / 2, 3)} | {rep['thresholds'][c]} | "
                     f"{rep['quiet_thresholds'][c]} | {_f(op['recall'])} | {_f(op['background_alerting'])} | "
                     f"{_f(qop['recall'])} |")
    lines += ["", "(measured on the same out-of-fold scores the thresholds were chosen on: slightly optimistic; the "
              "honest figures are the headline table's)", ""]
    if rep.get("variants_file"):
        lines += ["## What was tried", "",
                  f"Every recipe choice was measured on these same cross-source figures: `{rep['variants_file']}` "
                  "(rewritten by `sentinela train ... --variants`).", ""]
    lines += RETRAIN
    return "\n".join(lines) + "\n"


RETRAIN = [
    "## Retraining on your own clips",
    "",
    "A deployment hears its own forest better than any set here. Export what the rangers labelled and train on "
    "it together with the shipped folders:",
    "",
    "```",
    "sentinela labels export --stack NAME --out labelled/     # false alarms -> background/, confirmed -> <class>/",
    "sentinela train ../shared/audio/dev ../shared/audio/train labelled/",
    "```",
    "",
    "The export writes a `MANIFEST.csv` whose `source_repo` is the recorder (`site/device`), so the "
    "cross-source evaluation holds each recorder out in turn. Check the new report's cross-source table "
    "before deploying the new head (`sam build && sam deploy` ships `models/card.json` and the head).",
]


def render_variants(rep: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]]) -> str:
    lines = [
        "# Threat head: every recipe tried, cross-source",
        "",
        "Written by `sentinela train " + " ".join(rep["data"]["dirs"]) + " --variants`. The same cross-source "
        "figures as the training report's headline table (leave one source dataset out, honest thresholds), "
        "for recipes that each differ from the committed one in one choice. The committed recipe was chosen "
        "on these rows; the baseline is the plain standardised logistic regression.",
        "",
        HEADER,
        *[_row(name, s) for name, s in rows.items()],
        "",
        "### Folder to folder",
        "",
        *_f2f_rows(rows),
        "",
    ]
    return "\n".join(lines) + "\n"


def background_alerting(cs: CrossSource, files: Sequence[str], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Background clips that alert as the honest figures judged them (each held-out unit's own thresholds)."""
    scores = cs.honest_scores if cs.honest_scores is not None else cs.oof
    out = []
    for i, thr in enumerate(cs.honest_thresholds):
        if labels[i] != BACKGROUND:
            continue
        hits = [c for j, c in enumerate(THREAT_CLASSES) if scores[i, j] >= thr[c]]
        if hits:
            out.append({"file": files[i], "classes": hits,
                        "score": float(max(scores[i, THREAT_CLASSES.index(c)] for c in hits))})
    return sorted(out, key=lambda x: x["file"])
