"""docs/BAD_INPUT.md is made of generated sections, one per test that owns one: each test renders its
table and checks it against its section (between ``<!-- name -->`` and ``<!-- /name -->``), or, with
SENTINELA_WRITE_DOCS=1, writes it there (appending a section the file does not have yet)."""

from __future__ import annotations

import os
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "BAD_INPUT.md"


def check_section(name: str, text: str) -> None:
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{text.strip()}\n{end}"
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    current = doc[doc.index(start): doc.index(end) + len(end)] if start in doc and end in doc else None
    if os.environ.get("SENTINELA_WRITE_DOCS") == "1":
        doc = doc.replace(current, block) if current else (doc.rstrip() + "\n\n" + block if doc else block)
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(doc.rstrip() + "\n", encoding="utf-8")
        return
    assert current == block, (f"docs/BAD_INPUT.md section {name!r} is out of date: regenerate it with "
                              "SENTINELA_WRITE_DOCS=1 .venv/bin/python -m pytest -q tests/integration")
