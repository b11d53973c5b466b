"""The house rules of the layout, read from the code's own imports (every import, lazy ones included):

- the runtime (``sentinela``, layers/core/: what CoreLayer ships) never imports the tools (``sentinela_tools``);
- the domain imports nothing of the services, the adapters, the wiring or the tools;
- the incidents see storage only through the repository protocols (sentinela.domain.repositories);
- the Lambda handlers import only the runtime;
- no module imports itself back through any chain (no import cycle), in either package.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"sentinela": REPO / "layers" / "core" / "sentinela", "sentinela_tools": REPO / "tools" / "sentinela_tools"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for top, root in ROOTS.items():
        for path in root.rglob("*.py"):
            parts = [top, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def imported(path: Path, name: str | None = None) -> set[str]:
    """The project modules ``path`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    is_pkg = path.name == "__init__.py"
    package = (name or "").split(".") if is_pkg else (name or "").split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # sentinela.x.y.Name -> sentinela.x.y
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in ROOTS:
                out.add(t)
    return out


GRAPH = {name: imported(path, name) - {name} for name, path in MODULES.items()}


def test_the_layout_is_read() -> None:
    """The rules below would pass on nothing: make sure the packages and their arrows are there."""
    assert {"sentinela.services.incidents", "sentinela.adapters.store", "sentinela.domain.policy",
            "sentinela_tools.cli", "sentinela_tools.training.fit"} <= set(MODULES)
    assert "sentinela.domain.repositories" in GRAPH["sentinela.services.incidents"]
    assert sum(len(v) for v in GRAPH.values()) > 100


def test_the_runtime_never_imports_the_tools() -> None:
    bad = {m: sorted(t for t in deps if t.startswith("sentinela_tools"))
           for m, deps in GRAPH.items() if m.split(".")[0] == "sentinela"}
    assert not {m: d for m, d in bad.items() if d}


def test_the_domain_imports_only_the_domain() -> None:
    bad = {m: sorted(t for t in deps if not t.startswith("sentinela.domain"))
           for m, deps in GRAPH.items() if m.startswith("sentinela.domain")}
    assert not {m: d for m, d in bad.items() if d}


def test_the_runtime_imports_run_one_way() -> None:
    """domain <- adapters <- services <- runtime: an adapter never imports a service, nothing below the
    wiring imports the wiring (sentinela.runtime)."""
    bad = {m: sorted(d for d in deps if d.startswith("sentinela.services") or d == "sentinela.runtime")
           for m, deps in GRAPH.items() if m.startswith("sentinela.adapters")}
    bad |= {m: sorted(d for d in deps if d == "sentinela.runtime")
            for m, deps in GRAPH.items() if m.startswith(("sentinela.services", "sentinela.domain"))}
    assert not {m: d for m, d in bad.items() if d}


@pytest.mark.parametrize("handler", sorted((REPO / "functions").glob("*/app.py")), ids=lambda p: p.parent.name)
def test_handlers_import_only_the_runtime(handler: Path) -> None:
    deps = imported(handler)
    assert deps, "a handler that imports nothing of the runtime?"
    assert not [d for d in deps if d.startswith("sentinela_tools")]


def test_no_import_cycle() -> None:
    try:
        graphlib.TopologicalSorter(GRAPH).prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_cycle_check_can_fail() -> None:
    with pytest.raises(graphlib.CycleError):
        back = {"sentinela.domain.repositories": {"sentinela.services.incidents"}}
        graphlib.TopologicalSorter({**GRAPH, **back}).prepare()


def _env_reads(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("environ", "getenv")
            and isinstance(n.value, ast.Name) and n.value.id == "os"]


def test_only_the_settings_read_the_environment() -> None:
    """One Settings (sentinela.config) for every environment read of the runtime and the handlers."""
    files = [p for name, p in MODULES.items() if name.split(".")[0] == "sentinela" and name != "sentinela.config"]
    files += sorted((REPO / "functions").glob("*/app.py"))
    assert not {str(p.relative_to(REPO)): lines for p in files if (lines := _env_reads(p))}
    assert _env_reads(MODULES["sentinela.config"])  # the check sees an os.environ read where there is one


def test_the_services_never_import_the_store() -> None:
    """They see storage through the repository protocols (sentinela.domain.repositories) only: IncidentService
    runs on the in-memory fake in the unit tests, and nothing of a service may reach for the Store."""
    bad = [m for m, deps in GRAPH.items() if m.startswith("sentinela.services") and "sentinela.adapters.store" in deps]
    assert not bad
