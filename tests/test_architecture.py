"""The package map of docs/architecture.md, checked on the source: no cycle, one direction.

Every ``import`` and ``from ... import`` of ``recmodel`` modules is read with ``ast`` (those
inside functions too: a lazy import is still a dependency). A subpackage may import itself and
the subpackages of strictly lower layers, never a higher or a sibling one.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recmodel"

# Lower layers first; packages of one layer do not import each other.
LAYERS = (
    ("core",),
    ("ingest", "synthetic", "evaluation"),
    ("retriever", "baselines", "ranker", "report"),
    ("distill",),
    ("serving",),
    ("steps",),
)
LAYER = {package: depth for depth, packages in enumerate(LAYERS) for package in packages}
TOP_LEVEL = {"__init__", "__main__"}  # recmodel/__main__.py is the CLI's entry point


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``recmodel...`` module ``path`` imports, resolved to module names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # ``from recmodel.x import y`` may name the module recmodel.x.y
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYER) else parts[-1]


def test_every_subpackage_has_a_layer():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYER)
    flat = {p.stem for p in PACKAGE.glob("*.py")}
    assert flat == TOP_LEVEL, f"modules outside the subpackages: {sorted(flat - TOP_LEVEL)}"


def test_imports_follow_the_layers():
    wrong = []
    for module, imports in graph().items():
        source = package_of(module)
        for target in imports:
            dest = package_of(target)
            if source in TOP_LEVEL or dest == source or dest not in LAYER:
                continue
            if LAYER[dest] >= LAYER[source]:
                wrong.append(
                    f"{module} -> {target} ({source} layer {LAYER[source]}, "
                    f"{dest} layer {LAYER[dest]})"
                )
    assert not wrong, "imports against the package direction:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    edges = {m: {t for t in imports if t != m} for m, imports in graph().items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_the_checks_see_a_planted_cycle_and_a_wrong_direction(tmp_path, monkeypatch):
    """The two rules fail on a tree that breaks them (they are not vacuous)."""
    fake = tmp_path / "recmodel"
    for package in ("core", "retriever"):
        (fake / package).mkdir(parents=True)
        (fake / package / "__init__.py").write_text("")
    (fake / "core" / "a.py").write_text("from recmodel.retriever.b import f\n")
    (fake / "retriever" / "b.py").write_text("import recmodel.core.a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "ROOT", tmp_path)
    monkeypatch.setattr(__import__(__name__, fromlist=["x"]), "PACKAGE", fake)
    with pytest.raises(AssertionError, match="core.a -> recmodel.retriever.b"):
        test_imports_follow_the_layers()
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_no_import_cycle()
