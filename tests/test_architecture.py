"""The package layout: imports point only down the stages, and no module imports itself round a circle.

Parses every module's imports (top-level and inside functions) with `ast`, so
a lazy import cannot hide a circle or an upward dependency.
"""

import ast
import os

from conftest import REPO

PACKAGE = os.path.join(REPO, "salt_jax")
# Stage of each top-level part of salt_jax: a module may import only its own stage or lower ones.
STAGES = {"errors": 0, "cli": 0, "paths": 0, "distributed": 0, "renamed": 0, "data": 1, "model": 2, "hf": 3, "kd": 4, "config": 5, "recipes": 5, "train": 6,
          "experiment": 7, "aot": 7, "main": 8, "bench": 8, "prepare": 8, "compile": 8, "teacher_cache": 8,
          "eval": 5, "sample": 8}


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return out


def _imports(path: str, name: str, modules) -> set[str]:
    """salt_jax modules imported by the module at `path` (a package import counts as its module)."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("salt_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("salt_jax"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m != name and m != "salt_jax"}


def _graph():
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _stage(module: str) -> int:
    part = module.split(".")[1] if module != "salt_jax" else "errors"
    return STAGES[part]


def test_every_part_of_the_package_has_a_stage():
    parts = {m.split(".")[1] for m in _modules() if m != "salt_jax"}
    assert parts == set(STAGES), parts ^ set(STAGES)


def test_imports_point_down_the_stages():
    upward = [(a, b) for a, deps in _graph().items() if a != "salt_jax" for b in deps if _stage(b) > _stage(a)]
    assert upward == []


def test_hf_never_imports_kd_or_train():
    graph = _graph()
    bad = [(a, b) for a, deps in graph.items() if a.startswith("salt_jax.hf") for b in deps
           if b.startswith(("salt_jax.kd", "salt_jax.train", "salt_jax.experiment"))]
    assert bad == []


def test_no_import_circles():
    graph = _graph()
    state, cycle = {}, []

    def visit(node, path):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycle.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycle == []


def test_the_checker_sees_upward_imports_and_circles(tmp_path):
    """The parser finds function-level imports (the kind that hid the old circles)."""
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from salt_jax.train import loop\n    import salt_jax.kd.teacher\n")
    assert _imports(str(f), "salt_jax.data.m", _modules()) == {"salt_jax.train.loop", "salt_jax.kd.teacher"}


def test_every_subpackage_says_what_it_holds_and_may_import():
    for name, path in _modules().items():
        if path.endswith("__init__.py") and name != "salt_jax":
            doc = ast.get_docstring(ast.parse(open(path).read())) or ""
            assert "import" in doc and len(doc.splitlines()) >= 3, name
