"""What every command shares: its one JSON document, its user-facing error, the deployed stack's outputs.

``--json`` always means "print JSON to stdout": while such a command runs, its human-readable lines go to
stderr (``sentinela_tools.cli.main`` redirects them) and :func:`emit_json` writes to the real stdout, so
``sentinela ... --json | jq`` always reads one JSON document.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class CliError(Exception):
    """A failure the user can act on; its text is the whole message (no traceback)."""


_json_out: TextIO | None = None


@contextlib.contextmanager
def json_to_stdout() -> Iterator[None]:
    """The command's JSON to the real stdout; everything else it prints to stderr."""
    global _json_out
    _json_out = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_out = None


def emit_json(obj: Any) -> None:
    """The command's JSON document, to stdout even while its human-readable lines go to stderr."""
    out = _json_out or sys.stdout
    out.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
    out.flush()


def stack_output(stack: str | None, key: str) -> str:
    """An output of the deployed CloudFormation stack (``--stack NAME``), e.g. its DataTableName."""
    if not stack:
        raise CliError("give --table NAME or --stack NAME")
    import boto3

    outs = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"][0].get("Outputs", [])
    for o in outs:
        if o["OutputKey"] == key:
            return str(o["OutputValue"])
    raise CliError(f"stack {stack} has no output {key}")
