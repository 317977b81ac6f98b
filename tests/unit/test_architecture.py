"""The package layout keeps its promises: no import cycle, type-only and in-function imports
included (so no module's import depends on another's being imported first), every module imports,
none grows past 400 lines, and nothing outside the stage spec spells Ray Data's batch format."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "evol_ray"
MODULES = sorted(
    ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in ROOT.rglob("*.py")
)


def test_every_module_imports():
    """Every module in one fresh interpreter (with no cycle in the graph below, the order in which
    they are imported cannot matter)."""
    code = ("import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
            "    except Exception as e:\n        print(f'{m}: {type(e).__name__}: {e}')\n")
    r = subprocess.run([sys.executable, "-c", code, *MODULES], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr[-2000:]


def test_the_config_schema_imports_nothing_of_the_project():
    """Checks, recipes and the run key are built on the schema, never the other way (its prompt
    texts are filled in at load: `config._fill_prompts`)."""
    import ast

    tree = ast.parse((ROOT / "schema.py").read_text())
    ours = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            and any(name.startswith("evol_ray") for name in
                    ([getattr(n, "module", None) or ""] + [a.name for a in n.names]))]
    assert ours == []


def test_import_graph_has_no_cycle():
    """A type-only import counts: a cycle of types is one of meaning (a module and what it
    describes each needing the other)."""
    import ast

    graph = {}
    for p in ROOT.rglob("*.py"):
        mod = ".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):  # every import: top level, under TYPE_CHECKING, inside functions
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evol_ray"):
                deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("evol_ray"))
        graph[mod] = {d for d in deps if d != mod}
    graph = {m: {d for d in deps if d in graph} for m, deps in graph.items()}
    state = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for d in sorted(graph[m]):
            visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        visit(m, [])


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_is_at_most_400_lines(path):
    assert len(path.read_text().splitlines()) <= 400


def test_batch_format_is_stated_once():
    """Stages state their settings in `evol_ray/stage.py`'s spec, not at each call site."""
    offenders = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                 if ".map_batches(" in p.read_text() and p.name != "stage.py"]
    assert offenders == []
