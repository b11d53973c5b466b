"""How big the classify function is once unpacked, against Lambda's 250 MB unzipped limit.

Lambda counts the function code and all its layers together, unzipped. This installs the runtime layer's
requirements the way the Lambda image needs them (CPython 3.12, manylinux x86-64 wheels only) into a
scratch folder, measures it, and adds the core package, the classify handler and the model files.

    python -m sentinela_tools.devtools.layer_size [--json OUT] [--requirements FILE] [--keep DIR]

Needs the package index (pip download); nothing is installed into the running environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
LAMBDA_UNZIPPED_LIMIT = 262_144_000  # 250 MiB, the documented quota for function + layers, unzipped
MB = 1024 * 1024
PIP_PLATFORM_ARGS = ["--implementation", "cp", "--only-binary=:all:", "--python-version", "3.12",
                     "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]


def runtime_requirements(repo: Path = REPO) -> tuple[list[str], str]:
    """The runtime layer's pins: its requirements.txt, or pyproject's dependencies minus boto3."""
    req = repo / "layers" / "runtime" / "requirements.txt"
    if req.is_file():
        lines = [ln.split("#", 1)[0].strip() for ln in req.read_text(encoding="utf-8").splitlines()]
        return [ln for ln in lines if ln and not ln.startswith("-")], str(req.relative_to(repo))
    deps = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    # boto3 is in the Lambda runtime already; the layer leaves it out.
    source = "pyproject.toml [project].dependencies - boto3"
    return [d for d in deps if not d.lower().startswith("boto3")], source


def tree_bytes(path: Path, skip_pycache: bool = True) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        if skip_pycache:
            dirs[:] = [d for d in dirs if d != "__pycache__"]
        total += sum((Path(root) / f).stat().st_size for f in files if not (Path(root) / f).is_symlink())
    return total


def zipped_bytes(path: Path) -> int:
    """Size of a deflate zip of ``path`` (what is uploaded), made in a scratch file."""
    with tempfile.NamedTemporaryFile(suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp.name, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for f in files:
                    p = Path(root) / f
                    z.write(p, p.relative_to(path))
        return Path(tmp.name).stat().st_size


def by_package(target: Path) -> list[dict[str, Any]]:
    """Top-level entries of the install folder, largest first; *.dist-info folded into their package."""
    sizes: dict[str, int] = {}
    for entry in target.iterdir():
        name = entry.name
        if name.endswith(".dist-info"):
            name = name.split("-", 1)[0].lower() + " (dist-info)"
        sizes[name] = sizes.get(name, 0) + tree_bytes(entry)
    ranked = sorted(sizes.items(), key=lambda kv: -kv[1])
    return [{"name": n, "bytes": b, "mb": round(b / MB, 2)} for n, b in ranked]


def install_runtime(reqs: list[str], target: Path) -> list[str]:
    req_file = target.parent / "requirements-layer.txt"
    req_file.write_text("\n".join(reqs) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
           "-t", str(target), *PIP_PLATFORM_ARGS, "-r", str(req_file)]
    subprocess.run(cmd, check=True)
    return [str(c) for c in cmd]


def model_files(card_path: Path) -> dict[str, Path]:
    """The files the classify function needs from the model layer: the card and what it names."""
    card = json.loads(card_path.read_text(encoding="utf-8"))
    base = card_path.parent
    files = {"card": card_path, "model": base / card["model"]["path"],
             "labels": base / card["model"]["labels_path"]}
    if card.get("head"):
        files["head"] = base / card["head"]["path"]
    lic = (base / card["model"]["path"]).parent / "LICENSE"
    if lic.is_file():
        files["licence"] = lic
    return files


def measure(repo: Path, reqs: list[str], req_source: str, target: Path, with_zip: bool) -> dict[str, Any]:
    cmd = install_runtime(reqs, target)
    runtime = tree_bytes(target)
    pkgs = by_package(target)
    # CoreLayer ships layers/core/ as it is: the runtime package only. The tools (tools/) never ride along.
    core_layer = repo / "layers" / "core"
    core = tree_bytes(core_layer / "sentinela")
    core_entries = sorted(p.name for p in core_layer.iterdir() if not p.name.endswith(".egg-info"))
    tools_dir = repo / "tools" / "sentinela_tools"
    tools = tree_bytes(tools_dir) if tools_dir.is_dir() else 0
    handler = tree_bytes(repo / "functions" / "classify") if (repo / "functions" / "classify").is_dir() else 0
    card_path = repo / "models" / "card.json"
    files = model_files(card_path)
    needed = {k: (str(p.relative_to(repo)), p.stat().st_size if p.is_file() else None)
              for k, p in files.items()}
    missing = [v[0] for v in needed.values() if v[1] is None]
    model_needed = sum(v[1] or 0 for v in needed.values())
    # template.yaml's ModelLayer ships the whole models/ folder as it is: everything in it counts.
    models_dir = tree_bytes(repo / "models")
    models_dir_files = sorted(((str(p.relative_to(repo)), p.stat().st_size)
                               for p in (repo / "models").rglob("*")
                               if p.is_file() and "__pycache__" not in p.parts), key=lambda kv: -kv[1])
    total_needed = runtime + core + handler + model_needed
    total_as_shipped = runtime + core + handler + models_dir
    res: dict[str, Any] = {
        "limit_bytes": LAMBDA_UNZIPPED_LIMIT,
        "limit_mb": LAMBDA_UNZIPPED_LIMIT / MB,
        "requirements_source": req_source,
        "requirements": reqs,
        "pip_command": cmd,
        "runtime_layer_bytes": runtime,
        "runtime_packages": pkgs,
        "core_package_bytes": core,
        "core_layer_entries": core_entries,
        "core_layer_has_tools": any((core_layer / e / "cli.py").exists() or e == "sentinela_tools"
                                    for e in core_entries),
        "tools_package_bytes_not_shipped": tools,
        "classify_handler_bytes": handler,
        "model_files": {k: {"path": v[0], "bytes": v[1]} for k, v in needed.items()},
        "model_files_missing": missing,
        "model_layer_needed_bytes": model_needed,
        "models_dir_bytes_as_shipped": models_dir,
        "models_dir_largest_files": [{"path": p, "bytes": b} for p, b in models_dir_files[:8]],
        "total_with_model_bytes": total_needed,
        "total_without_model_bytes": runtime + core + handler,
        "total_with_models_dir_as_shipped_bytes": total_as_shipped,
    }
    for k in ("total_with_model", "total_without_model", "total_with_models_dir_as_shipped"):
        b = res[f"{k}_bytes"]
        res[f"{k}_mb"] = round(b / MB, 1)
        res[f"{k}_fits"] = b <= LAMBDA_UNZIPPED_LIMIT
        res[f"{k}_headroom_mb"] = round((LAMBDA_UNZIPPED_LIMIT - b) / MB, 1)
    if with_zip:
        res["runtime_layer_zipped_bytes"] = zipped_bytes(target)
    return res


def print_report(r: dict[str, Any]) -> None:
    def mb(b: int | None) -> str:
        return "missing" if b is None else f"{b / MB:8.1f} MB"

    print(f"runtime layer ({r['requirements_source']}), CPython 3.12 manylinux x86-64 wheels, unzipped:")
    for p in r["runtime_packages"][:14]:
        print(f"  {p['name']:<34} {mb(p['bytes'])}")
    if len(r["runtime_packages"]) > 14:
        rest = sum(p["bytes"] for p in r["runtime_packages"][14:])
        print(f"  {'(' + str(len(r['runtime_packages']) - 14) + ' more)':<34} {mb(rest)}")
    zipped = r.get("runtime_layer_zipped_bytes")
    print(f"  {'= runtime layer':<34} {mb(r['runtime_layer_bytes'])}"
          + (f"  (zipped {mb(zipped).strip()})" if zipped else ""))
    print(f"core layer: runtime package sentinela/  {mb(r['core_package_bytes'])}  "
          f"(layers/core/ holds {', '.join(r['core_layer_entries'])}; tools "
          f"{'INCLUDED' if r['core_layer_has_tools'] else 'not shipped'}: "
          f"sentinela_tools/ {mb(r['tools_package_bytes_not_shipped']).strip()})")
    print(f"classify handler functions/classify/  {mb(r['classify_handler_bytes'])}")
    for k, v in r["model_files"].items():
        print(f"model {k:<8} {v['path']:<28} {mb(v['bytes'])}")
    print(f"models/ as template.yaml ships it      {mb(r['models_dir_bytes_as_shipped'])}  (largest: "
          + ", ".join(f"{f['path']} {f['bytes'] / MB:.1f} MB" for f in r["models_dir_largest_files"][:4])
          + ")")
    print(f"\nLambda limit, function + layers unzipped: {r['limit_mb']:.0f} MB")
    for k, what in (("total_without_model", "runtime + core + handler (model fetched from S3)"),
                    ("total_with_model", "... + model layer (onnx, card, labels, head, licence)"),
                    ("total_with_models_dir_as_shipped", "... + models/ folder as shipped today")):
        print(f"  {what:<56} {r[f'{k}_mb']:7.1f} MB  {'fits' if r[f'{k}_fits'] else 'OVER'}, "
              f"headroom {r[f'{k}_headroom_mb']:.1f} MB")
    if r["model_files_missing"]:
        print(f"  note: missing model files (counted as 0): {r['model_files_missing']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sentinela_tools.devtools.layer_size", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--requirements", help="requirements file (default layers/runtime/requirements.txt)")
    ap.add_argument("--keep", help="install into this folder and keep it (default: a temporary one)")
    ap.add_argument("--no-zip", action="store_true", help="skip measuring the zipped size")
    a = ap.parse_args(argv)
    if a.requirements:
        p = Path(a.requirements)
        reqs = [ln.split("#", 1)[0].strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        reqs, source = [r for r in reqs if r and not r.startswith("-")], str(p)
    else:
        reqs, source = runtime_requirements(REPO)
    try:
        if a.keep:
            target = Path(a.keep) / "python"
            target.mkdir(parents=True, exist_ok=True)
            r = measure(REPO, reqs, source, target, not a.no_zip)
        else:
            with tempfile.TemporaryDirectory(prefix="sentinela-layer-") as tmp:
                r = measure(REPO, reqs, source, Path(tmp) / "python", not a.no_zip)
    except subprocess.CalledProcessError as exc:
        print(f"error: pip failed ({exc.returncode}); see its output above", file=sys.stderr)
        return 2
    print_report(r)
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
