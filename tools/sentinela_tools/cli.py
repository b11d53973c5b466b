"""The `sentinela` command. Every failure a user can cause ends in one line on stderr, never a traceback.

One error boundary (:func:`main`): AWS, network, file and input errors raised anywhere below a command
become ``error: <what happened>`` on stderr and exit status 2. ``--json`` always means "print JSON to
stdout": while such a command runs, its human-readable lines go to stderr and :func:`emit_json` writes
to the real stdout (sentinela_tools.output), so ``sentinela ... --json | jq`` always reads one JSON document.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from sentinela import __version__
from sentinela_tools.output import CliError, emit_json, json_to_stdout

DEFAULT_AUDIO = Path("../shared/audio/dev")
# The demo pack committed in the repository (demo/audio, with its ATTRIBUTION file): what `sentinela demo`
# runs on when no folder is given and ../shared is absent (a fresh clone).
DEMO_PACK = Path(__file__).resolve().parents[2] / "demo" / "audio"


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def cmd_classify(args: argparse.Namespace) -> int:
    from sentinela.adapters.audio import AudioError
    from sentinela.adapters.model import BirdNetOnnx, ModelError
    from sentinela.config import Settings, default_card_path
    from sentinela.domain.card import CardError, load_card
    from sentinela.services.classify import classify_source

    try:
        model = BirdNetOnnx(load_card(args.card or default_card_path()), threads=args.threads)
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
            # The same duration cap as the deployed classify (MAX_CLIP_SECONDS, the template's default).
            out = classify_source(path, model, batch_size=args.batch, max_seconds=Settings.from_env().max_clip_seconds)
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
        for d in rec["detections"]:
            flag = "  ALERT" if d["alert"] else ""
            print(f"{name}\t{d['start_s']:7.1f}-{d['end_s']:<7.1f}\t{d['kind']:<7}\t{d['label']}\t"
                  f"{d['confidence']:.3f}{flag}")
        if not rec["detections"]:
            print(f"{name}\t(no detections)")
    if args.json:
        emit_json(results)
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from sentinela.config import default_card_path
    from sentinela.domain.card import CardError, load_card
    from sentinela_tools.demo import run_demo

    card = Path(args.card) if args.card else default_card_path()
    try:
        c = load_card(card)
        if not c.path.exists():
            raise CardError(f"model file not found: {c.path} (run `make model`)")
    except CardError as exc:
        _err(str(exc))
        return 2
    audio = Path(args.audio) if args.audio else default_demo_audio()
    result = run_demo(audio, Path(args.json_out) if args.json_out else None, card=card,
                      roster=Path(args.roster) if args.roster else None, via_uploader=args.via_uploader,
                      progress=not args.json)
    if args.json:
        emit_json(result)
    return 0


def default_demo_audio() -> Path | None:
    """../shared/audio/dev when it is there (the full set), else the demo pack committed in the repository."""
    for folder in (DEFAULT_AUDIO, DEMO_PACK):
        if folder.is_dir():
            return folder
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sentinela", description="Acoustic threat detection and ranger alerts.")
    p.add_argument("--version", action="version", version=f"sentinela {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="run the whole flow on the embedded local stack")
    d.add_argument("--audio", help="folder of recordings (default ../shared/audio/dev when present, else the "
                                   "demo pack in demo/audio)")
    d.add_argument("--json", action="store_true", help="print the summary as JSON to stdout")
    d.add_argument("--json-out", metavar="PATH", help="also write the summary as JSON to this file")
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

    _register_extra(sub)
    return p


def _register_extra(sub: Any) -> None:
    """Commands that live in their own modules register themselves here: bench, train, eval; sites and
    rangers (rangers_cli); status and replay (ops_cli); devices and upload (devices_cli); labels (labels_cli)."""
    import importlib

    from sentinela.domain.card import CardError

    for name in ("bench", "training.command", "evaluate", "modelgate", "rangers_cli", "ops_cli", "devices_cli",
                 "labels_cli"):
        try:
            mod = importlib.import_module(f"sentinela_tools.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"sentinela_tools.{name}":
                continue
            # A third-party package this install lacks (a recorder-only install has no AWS SDK, PyYAML
            # or onnxruntime): the commands that need it say so instead of breaking `sentinela upload`.
            _unavailable(sub, name, str(exc.name))
            continue
        except CardError as exc:  # the tools that list the threat classes read them from the model card
            _unavailable(sub, name, f"the model card ({exc}; MODEL_CARD names another)")
            continue
        mod.register(sub)


_COMMANDS = {"bench": ("bench",), "training.command": ("train",), "evaluate": ("eval",),
             "modelgate": ("quantgate",), "rangers_cli": ("sites", "rangers"), "ops_cli": ("status", "replay"),
             "devices_cli": ("devices", "upload"), "labels_cli": ("labels",)}


def _unavailable(sub: Any, module: str, missing: str) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise CliError(_missing(args.cmd, missing))

    for cmd in _COMMANDS.get(module, ()):
        p = sub.add_parser(cmd, help=f"(not installed: needs {missing})")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=fail)


def _missing(cmd: str, module: str) -> str:
    return (f"`sentinela {cmd}` needs {module}, which this install does not have (a recorder-only install "
            "runs `sentinela upload`; install the full package for the rest)")


def _describe(exc: BaseException) -> str | None:
    """One line for the failures a user meets (AWS, network, files, input); None for a bug."""
    mod = type(exc).__module__.split(".")[0]
    if mod in ("botocore", "boto3"):
        # ClientError's text already names the call and the code: "An error occurred (ValidationError)
        # when calling the DescribeStacks operation: Stack with id nosuch does not exist".
        text = str(exc)
        if "credentials" in text.lower():
            return f"AWS: {text} (configure credentials: aws configure, or AWS_PROFILE)"
        return f"AWS: {text}"
    if mod in ("urllib3", "requests", "twilio"):
        return f"network: {exc}"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"network: {exc}"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, (ValueError, UnicodeError)):
        return f"bad input: {exc}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    as_json = getattr(args, "json", None) is True
    try:
        if as_json:
            # The human lines go to stderr; emit_json writes the one JSON document to the real stdout.
            with json_to_stdout():
                return int(args.fn(args))
        return int(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        _err(str(exc))
        return 2
    except ModuleNotFoundError as exc:
        _err(_missing(args.cmd, str(exc.name)))
        return 2
    except Exception as exc:
        what = _describe(exc)
        if what is None:
            if os.environ.get("SENTINELA_DEBUG"):
                raise
            what = f"unexpected {type(exc).__name__}: {exc} (SENTINELA_DEBUG=1 shows where)"
        _err(" ".join(what.split()))
        return 2


if __name__ == "__main__":
    sys.exit(main())
