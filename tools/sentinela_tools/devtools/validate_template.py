"""Validate template.yaml offline, in three stages, without AWS credentials or a network.

    python -m sentinela_tools.devtools.validate_template template.yaml

1. cfn-lint on the SAM template. cfn-lint 1.x checks SAM resources against SAM's schemas but no longer
   runs the SAM transform, so it misses what only the transform sees.
2. The SAM translator's ``transform()`` (what CloudFormation runs on deploy), with local CodeUri /
   ContentUri swapped for s3:// placeholders as ``sam package`` would, and a stub managed-policy map.
   Fails with the translator's own causes (bad event types, bad event properties ...).
3. cfn-lint on the translated CloudFormation JSON (written to a temporary directory): catches what is
   only wrong after the transform, e.g. a dependency cycle through generated resources.

One line per stage with PASS/FAIL and counts, then its findings. Exit status 1 when any stage has an
error; warnings are printed and allowed (they are advice, and cfn-lint's set changes between releases).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentinela_tools.devtools.template_reader import (
    TemplateError,
    load_template,
    loads_template,
    notify_filter_patterns,
    stream_event_settings,
    table_specs,
)

__all__ = [
    "Finding",
    "StageResult",
    "TemplateError",
    "ValidationReport",
    "load_template",
    "loads_template",
    "main",
    "notify_filter_patterns",
    "stream_event_settings",
    "table_specs",
    "validate",
]

STAGE_LINT = "cfn-lint"
STAGE_TRANSFORM = "sam-transform"
STAGE_LINT_TRANSLATED = "cfn-lint-translated"

DEFAULT_REGION = "us-east-1"
PLACEHOLDER_BUCKET = "s3://sentinela-validate-placeholder"
# Properties holding a local path that `sam package` uploads and replaces with an S3 URI.
_PACKAGED_PROPERTIES = ("CodeUri", "ContentUri", "DefinitionUri")


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    rule: str
    message: str
    location: str = ""

    def render(self) -> str:
        where = f"{self.location} " if self.location else ""
        return f"  {self.severity:7} {where}[{self.rule}] {self.message}"


@dataclass(frozen=True)
class StageResult:
    name: str
    ok: bool
    summary: str
    findings: list[Finding] = field(default_factory=list)
    skipped: bool = False

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def render(self) -> str:
        status = "SKIP" if self.skipped else ("PASS" if self.ok else "FAIL")
        return f"{status} {self.name}: {self.summary}"


@dataclass(frozen=True)
class ValidationReport:
    template: Path
    stages: list[StageResult]
    translated: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.stages)

    @property
    def failed_stages(self) -> list[str]:
        return [s.name for s in self.stages if not s.ok]

    def stage(self, name: str) -> StageResult:
        return next(s for s in self.stages if s.name == name)


# ------------------------------------------------------------------------------------------- stage 1 / 3


def _severity(rule_id: str) -> str:
    return {"E": "error", "W": "warning"}.get(rule_id[:1], "info")


def _cfn_lint(stage: str, path: Path, region: str, label: str, line_numbers: bool = True) -> StageResult:
    """cfn-lint ``path``; findings are located by ``label[:line]`` and the path inside the template."""
    from cfnlint.api import lint_file
    from cfnlint.config import ManualArgs

    matches = lint_file(path, config=ManualArgs(regions=[region]))
    findings: list[Finding] = []
    for m in matches:
        rule_id = str(m.rule.id)
        where = f"{label}:{m.linenumber}" if line_numbers else label
        inside = getattr(m, "path_string", "")
        location = f"{where} {inside}" if inside else where
        findings.append(Finding(_severity(rule_id), rule_id, str(m.message), location))
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = sum(1 for f in findings if f.severity == "warning")
    summary = f"{errors} errors, {warnings} warnings ({label})"
    return StageResult(stage, ok=errors == 0, summary=summary, findings=findings)


# ------------------------------------------------------------------------------------------------ stage 2


class _OfflineManagedPolicies:
    """Stands in for samtranslator's ManagedPolicyLoader, which would call IAM ListPolicies.

    An empty map makes SAM keep any managed-policy name as written; this template uses explicit roles,
    so nothing depends on the lookup.
    """

    def load(self) -> dict[str, str]:
        return {}


def _package_placeholders(template: dict[str, Any], base: Path) -> list[Finding]:
    """Swap local paths for S3 placeholders in place (as `sam package` would); missing paths are errors."""
    findings: list[Finding] = []
    holders: list[tuple[str, dict[str, Any]]] = [
        (logical_id, res.get("Properties", {}))
        for logical_id, res in template["Resources"].items()
        if isinstance(res, dict) and isinstance(res.get("Properties"), dict)
    ]
    globals_ = template.get("Globals", {})
    if isinstance(globals_, dict):
        holders += [(f"Globals.{k}", v) for k, v in globals_.items() if isinstance(v, dict)]
    for owner, props in holders:
        for key in _PACKAGED_PROPERTIES:
            value = props.get(key)
            if not isinstance(value, str) or value.startswith("s3://"):
                continue
            if not (base / value).exists():
                problem = f"{owner}.{key} '{value}' does not exist (sam build would fail)"
                findings.append(Finding("error", "local-path", problem))
            props[key] = f"{PLACEHOLDER_BUCKET}/{value.strip('/') or 'root'}.zip"
    return findings


def _failed_transform(findings: list[Finding]) -> StageResult:
    return StageResult(STAGE_TRANSFORM, ok=False, summary=f"{len(findings)} errors", findings=findings)


def _transform(template: dict[str, Any], base: Path) -> tuple[StageResult, dict[str, Any] | None]:
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.translator.transform import transform

    doc = copy.deepcopy(template)  # the translator mutates its input
    findings = _package_placeholders(doc, base)
    source_count = len(doc["Resources"])
    try:
        out: dict[str, Any] = transform(doc, {}, _OfflineManagedPolicies())
    except InvalidDocumentException as exc:
        findings += [Finding("error", "sam", cause.message) for cause in exc.causes]
        return _failed_transform(findings), None
    except Exception as exc:  # the translator's own crash on odd input is a failure, not a traceback
        findings.append(Finding("error", "sam", f"{type(exc).__name__}: {exc}"))
        return _failed_transform(findings), None
    errors = len(findings)
    summary = f"{errors} errors, {source_count} template resources -> {len(out['Resources'])} CloudFormation"
    return StageResult(STAGE_TRANSFORM, ok=errors == 0, summary=summary, findings=findings), out


# ------------------------------------------------------------------------------------------------- driver


@contextmanager
def _region(region: str) -> Iterator[None]:
    """AWS_DEFAULT_REGION for the translator (it derives ARN partitions from it), restored afterwards."""
    before = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region
    try:
        yield
    finally:
        if before is None:
            del os.environ["AWS_DEFAULT_REGION"]
        else:
            os.environ["AWS_DEFAULT_REGION"] = before


def validate(path: str | Path, base_dir: str | Path | None = None) -> ValidationReport:
    """Run the three stages on the template at ``path``; stage 3 is skipped when the transform fails.

    Local CodeUri/ContentUri paths are resolved against ``base_dir`` (default: the template's folder).
    """
    template_path = Path(path)
    base = Path(base_dir) if base_dir is not None else template_path.resolve().parent
    region = os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    logging.getLogger("cfnlint").setLevel(logging.ERROR)
    logging.getLogger("samtranslator").setLevel(logging.ERROR)

    stages = [_cfn_lint(STAGE_LINT, template_path, region, template_path.name)]
    try:
        template = load_template(template_path)
    except (OSError, TemplateError, ValueError) as exc:  # yaml errors are ValueErrors
        stages.append(_failed_transform([Finding("error", "parse", f"{type(exc).__name__}: {exc}")]))
        template = None
    translated = None
    if template is not None:
        with _region(region):
            result, translated = _transform(template, base)
        stages.append(result)
    if translated is None:
        skipped = StageResult(STAGE_LINT_TRANSLATED, ok=True, summary="no translation to lint", skipped=True)
        stages.append(skipped)
    else:
        with tempfile.TemporaryDirectory(prefix="sentinela-validate-") as tmp:
            out = Path(tmp) / f"{template_path.stem}.translated.json"
            out.write_text(json.dumps(translated, indent=1), encoding="utf-8")
            # The file is gone when the report is read: locate findings by resource path, not line.
            stages.append(_cfn_lint(STAGE_LINT_TRANSLATED, out, region, "translated", line_numbers=False))
    return ValidationReport(template=template_path, stages=stages, translated=translated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sentinela_tools.devtools.validate_template",
        description="cfn-lint + SAM transform + cfn-lint on the transformed template, offline.",
    )
    parser.add_argument("template", nargs="?", default="template.yaml", type=Path)
    args = parser.parse_args(argv)
    if not args.template.is_file():
        print(f"FAIL {args.template}: no such file", file=sys.stderr)
        return 2
    import yaml

    try:
        report = validate(args.template)
    except yaml.YAMLError as exc:  # a syntax error: one line with where it is, not a traceback
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        print(f"FAIL {args.template}:{where}: YAML syntax: {problem}", file=sys.stderr)
        return 1
    for stage in report.stages:
        print(stage.render())
        for finding in stage.findings:
            print(finding.render())
    print(("PASS" if report.ok else "FAIL") + f" {report.template}: " + (
        "all stages passed" if report.ok else "failed at " + ", ".join(report.failed_stages)
    ))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
