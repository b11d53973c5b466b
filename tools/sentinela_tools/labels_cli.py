"""`sentinela labels export`: the clips rangers judged, as a labelled folder that `sentinela train` takes.

A reply "2" (false alarm) labels the incident's clips ``false_alarm``: they go to ``background/``. An
incident closed as resolved ("3") confirms its clips: each goes to the folder of the threat it alerted
for. The folder gets a MANIFEST.csv in the shipped sets' columns, with the recorder (``site/device``) as
``source_repo``, so training's cross-source evaluation holds each recorder out in turn.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sentinela_tools.classes import THREAT_CLASSES
from sentinela_tools.evaluate import BACKGROUND

if TYPE_CHECKING:  # boto3 stays out of the CLI's import (a recorder-only install has none)
    from sentinela.adapters.store import Store

MANIFEST_COLUMNS = ("file", "label", "source_repo", "source_path", "source_commit", "license_note",
                    "duration_s", "sample_rate", "channels")


def labelled_clips(items: list[dict[str, Any]]) -> tuple[dict[str, str], list[str]]:
    """clip_id -> label folder, from the table's items; and the clips left out (with why)."""
    incidents = {str(i["incident_id"]): i for i in items if i.get("type") == "incident"}
    verdicts: dict[str, set[str]] = {}
    for i in items:
        if i.get("type") == "clip" and i.get("label") == "false_alarm":
            verdicts.setdefault(str(i["clip_id"]), set()).add(BACKGROUND)
        elif i.get("type") == "incident_member" and str(i.get("threat", "")) in THREAT_CLASSES and \
                incidents.get(str(i.get("incident_id")), {}).get("state") == "resolved":
            verdicts.setdefault(str(i["clip_id"]), set()).add(str(i["threat"]))
    labels = {cid: next(iter(v)) for cid, v in verdicts.items() if len(v) == 1}
    conflicts = [f"{cid}: contradictory verdicts {', '.join(sorted(v))}" for cid, v in sorted(verdicts.items())
                 if len(v) > 1]
    return labels, conflicts


def export(store: Store, s3: Any, out_dir: Path) -> dict[str, Any]:
    items = store.scan_all()
    labels, conflicts = labelled_clips(items)
    clips = {str(i["clip_id"]): i for i in items if i.get("type") == "clip"}
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for cid, label in sorted(labels.items()):
        c = clips[cid]
        key = str(c["key"])
        name = "__".join(key.split("/")[1:]).replace(":", "-")  # clips/<site>/<device>/<time>.<ext>
        extra = {"VersionId": c["version_id"]} if c.get("version_id") not in (None, "", "null") else {}
        dest = out_dir / label / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            s3.download_file(str(c["bucket"]), key, str(dest), ExtraArgs=extra or None)
        except Exception as exc:
            missing.append(f"{key}: {exc}")
            continue
        rows.append({"file": f"{label}/{name}", "label": label,
                     "source_repo": f"{c.get('site_id')}/{c.get('device_id')}", "source_path": key,
                     "source_commit": c.get("version_id") or "", "license_note": "recorded by this deployment",
                     "duration_s": c.get("duration_s", ""), "sample_rate": c.get("sample_rate", ""),
                     "channels": c.get("channels", "")})
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "MANIFEST.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    per: dict[str, int] = {}
    for r in rows:
        per[r["label"]] = per.get(r["label"], 0) + 1
    return {"out": str(out_dir), "clips": len(rows), "per_label": per, "conflicts": conflicts, "missing": missing}


def cmd_export(args: argparse.Namespace) -> int:
    import boto3

    from sentinela.adapters.store import Store
    from sentinela_tools.output import stack_output

    table_name = args.table or stack_output(args.stack, "DataTableName")
    result = export(Store(table_name), boto3.client("s3"), Path(args.out))
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(result)
    else:
        print(f"exported {result['clips']} labelled clip(s) to {result['out']}: "
              + (", ".join(f"{k} {v}" for k, v in sorted(result["per_label"].items())) or "none"))
        for line in result["conflicts"]:
            print(f"  left out: {line}")
        for line in result["missing"]:
            print(f"  left out (could not download): {line}")
        print(f"train on it: sentinela train ../shared/audio/dev ../shared/audio/train {result['out']}")
    return 0 if not result["missing"] else 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("labels", help="clips rangers labelled, for retraining")
    sub = p.add_subparsers(dest="labels_cmd", required=True)
    e = sub.add_parser("export", help="write the labelled clips as <label>/ folders with a MANIFEST.csv",
                       description="False alarms go to background/, clips of incidents closed as resolved to "
                                   "their threat's folder; the folder is what `sentinela train` takes.")
    g = e.add_mutually_exclusive_group(required=True)
    g.add_argument("--table", help="DynamoDB table name (the local stack's, or a deployed one)")
    g.add_argument("--stack", help="a deployed stack name (reads its DataTableName output)")
    e.add_argument("--out", required=True, help="folder to write (created; files of the same name are replaced)")
    e.add_argument("--json", action="store_true", help="print the result as JSON to stdout")
    e.set_defaults(fn=cmd_export)

