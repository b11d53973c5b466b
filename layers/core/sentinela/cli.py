"""The `sentinela` command. Every failure a user can cause ends in one line on stderr, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__

DEFAULT_AUDIO = Path("../shared/audio/dev")


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def cmd_classify(args: argparse.Namespace) -> int:
    from .audio import AudioError
    from .card import CardError, load_card
    from .classify import classify_source
    from .config import default_card_path
    from .model import Model, ModelError

    try:
        model = Model(load_card(args.card or default_card_path()), threads=args.threads)
    except (CardError, ModelError) as exc:
        _err(str(exc))
        return 2
    status = 0
    results: list[dict[str, Any]] = []
    for name in args.files:
        path = Path(name)
        try:
            if not path.is_file():
                raise AudioError("no such file")
            out = classify_source(path, model, batch_size=args.batch)
        except AudioError as exc:
            _err(f"{name}: {exc.reason}")
            status = 2
            continue
        dets = [d for d in out.result.detections if d.threat or not args.threats_only]
        rec = {"file": name, "duration_s": round(out.info.duration_s, 2), "sample_rate": out.info.sample_rate,
               "channels": out.info.channels, "flags": out.flags,
               "alerts": [d.threat for d in out.result.alerts],
               "max_scores": {k: round(v, 4) for k, v in out.result.max_scores.items()},
               "detections": [{"label": d.label, "kind": d.kind, "confidence": round(d.confidence, 4),
                               "start_s": round(d.start_s, 2), "end_s": round(d.end_s, 2),
                               "alert": d.alert} for d in dets]}
        results.append(rec)
        if not args.json:
            for d in rec["detections"]:
                flag = "  ALERT" if d["alert"] else ""
                print(f"{name}\t{d['start_s']:7.1f}-{d['end_s']:<7.1f}\t{d['kind']:<7}\t{d['label']}\t"
                      f"{d['confidence']:.3f}{flag}")
            if not rec["detections"]:
                print(f"{name}\t(no detections)")
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from .card import CardError, load_card
    from .config import default_card_path
    from .demo import run_demo

    card = Path(args.card) if args.card else default_card_path()
    try:
        c = load_card(card)
        if not c.path.exists():
            raise CardError(f"model file not found: {c.path} (run `make model`)")
    except CardError as exc:
        _err(str(exc))
        return 2
    audio = Path(args.audio) if args.audio else (DEFAULT_AUDIO if DEFAULT_AUDIO.is_dir() else None)
    run_demo(audio, Path(args.json) if args.json else None, card=card,
             roster=Path(args.roster) if args.roster else None, via_uploader=args.via_uploader)
    return 0


def cmd_roster_import(args: argparse.Namespace) -> int:
    from .roster import RosterError, import_roster, load_roster
    from .store import Store

    try:
        roster = load_roster(args.file)
    except (RosterError, OSError) as exc:
        _err(str(exc))
        return 2
    table = args.table or _stack_output(args.stack, "DataTableName")
    sites, rangers = import_roster(Store(table), roster)
    print(f"imported {sites} site(s) and {rangers} ranger assignment(s) into {table}")
    return 0


def _stack_output(stack: str | None, key: str) -> str:
    if not stack:
        raise SystemExit("error: give --table NAME or --stack NAME")
    import boto3

    outs = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for o in outs:
        if o["OutputKey"] == key:
            return str(o["OutputValue"])
    raise SystemExit(f"error: stack {stack} has no output {key}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentinela", description="Acoustic threat detection and ranger alerts.")
    p.add_argument("--version", action="version", version=f"sentinela {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="run the whole flow on the embedded local stack")
    d.add_argument("--audio", help="folder of recordings (default ../shared/audio/dev when present)")
    d.add_argument("--json", help="write the summary as JSON to this file")
    d.add_argument("--card", help="model card (default models/card.json)")
    d.add_argument("--roster", help="sites and rangers file (default config/demo-roster.yaml)")
    d.add_argument("--via-uploader", action="store_true",
                   help="send the clips as recorders do: registered devices, `sentinela upload`, presign over HTTP")
    d.set_defaults(fn=cmd_demo)

    c = sub.add_parser("classify", help="classify local audio files, no cloud")
    c.add_argument("files", nargs="+")
    c.add_argument("--json", action="store_true", help="print JSON instead of one line per detection")
    c.add_argument("--card", help="model card (default models/card.json)")
    c.add_argument("--threats-only", action="store_true", help="leave out species detections")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--batch", type=int, default=8)
    c.set_defaults(fn=cmd_classify)

    r = sub.add_parser("roster", help="sites and rangers")
    rs = r.add_subparsers(dest="roster_cmd", required=True)
    ri = rs.add_parser("import", help="import sites and rangers from YAML/JSON into the table")
    ri.add_argument("file")
    ri.add_argument("--table", help="DynamoDB table name")
    ri.add_argument("--stack", help="a deployed stack name (reads its DataTableName output)")
    ri.set_defaults(fn=cmd_roster_import)
    _register_extra(sub)
    return p


def _register_extra(sub: Any) -> None:
    """Commands that live in their own modules register themselves here: bench, train, eval; sites and
    rangers (rangers_cli); status and replay (ops_cli); devices and upload (devices_cli); labels (labels_cli)."""
    import importlib

    for name in ("bench", "training.command", "evaluate", "modelgate", "rangers_cli", "ops_cli", "devices_cli",
                 "labels_cli"):
        try:
            mod = importlib.import_module(f"sentinela.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sentinela.{name}":
                raise
            continue
        mod.register(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
