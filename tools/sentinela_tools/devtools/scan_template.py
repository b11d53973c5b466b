"""Policy scan of template.yaml with checkov, offline, on the SAM source and on the SAM-translated template.

    python -m sentinela_tools.devtools.scan_template --checkov .cache/tools/checkov/bin/checkov template.yaml

checkov's SAM support is partial (it does not expand Globals or generated resources), so the template is
also translated (the SAM translator, as in validate_template) and the CloudFormation JSON scanned too.
checkov lives in its own venv (`make scan` creates it): its pinned dependencies clash with the project's.
Every suppression is in template.yaml itself (``Metadata: checkov: skip:`` with a comment saying why);
SAM carries a resource's Metadata to what it generates under the same logical id.

One line per scan (PASS/FAIL, passed/failed/skipped counts), then each failed check. Exit status 1 when
a check failed or the template could not be parsed; 2 when checkov or the translation is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def run_checkov(checkov: str, path: Path) -> dict[str, Any]:
    proc = subprocess.run([checkov, "-f", str(path), "--framework", "cloudformation", "--compact", "--quiet",
                           "-o", "json", "--skip-download"], capture_output=True, text=True)
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise RuntimeError(f"checkov gave no JSON (exit {proc.returncode}): {proc.stderr.strip()[-500:]}") from exc
    out: dict[str, Any] = data[0] if isinstance(data, list) else data
    if "results" not in out:  # nothing to scan comes back as a bare summary
        out = {"summary": out.get("summary", out), "results": {"failed_checks": []}}
    return out


def report(name: str, data: dict[str, Any]) -> bool:
    s = data["summary"]
    failed = data["results"].get("failed_checks", [])
    ok = not failed and not s.get("parsing_errors") and s.get("resource_count", 0) > 0
    print(f"{'PASS' if ok else 'FAIL'} checkov {name}: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
          f"{s.get('skipped', 0)} skipped (justified in template.yaml), {s.get('parsing_errors', 0)} parsing errors, "
          f"checkov {s.get('checkov_version', '?')}")
    for f in failed:
        print(f"  {f['check_id']} {f['resource']}: {f['check_name']}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("template", type=Path)
    ap.add_argument("--checkov", required=True, help="path of the checkov executable (its own venv)")
    args = ap.parse_args(argv)
    if not Path(args.checkov).exists():
        print(f"error: {args.checkov} not found (make scan installs it)", file=sys.stderr)
        return 2
    from sentinela_tools.devtools.validate_template import validate

    translated = validate(args.template).translated
    if translated is None:
        print("error: the SAM transform failed; run `make validate`", file=sys.stderr)
        return 2
    ok = report("template.yaml (SAM)", run_checkov(args.checkov, args.template))
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "translated.json"
        path.write_text(json.dumps(translated), encoding="utf-8")
        ok = report("translated template (CloudFormation)", run_checkov(args.checkov, path)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
