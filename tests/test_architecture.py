"""The package layout: imports point only down the stages, no module imports itself round a circle, and
each subpackage's docstring says truly what it holds and may import.

Parses every module's imports with `ast`: top-level ones and those inside functions (lazy imports),
relative ones resolved. Lazy imports count everywhere: one runs whenever its function does, so it is a
dependency like any other, only a later one; deferring it (to keep an optional library off the import
path, or to dodge a circle) must not hide a circle, an upward dependency or a package it uses.

The docstring of every package's `__init__.py` (salt_jax/data, salt_jax/eval/tasks, ...; not the
top-level salt_jax) holds two things the tests parse:

- one line per module of the package, each `- name.py: what it holds` (a subpackage: `- name/: ...`;
  an entry may go on over indented lines). Every line that starts with `- ` is such an entry. The entries
  name exactly the package's .py files (`__main__.py` too, `__init__.py` not) and its subpackages.
- exactly one line `Imports: salt_jax.errors, salt_jax.paths, salt_jax.data` (or `Imports: nothing`):
  the salt_jax modules and packages outside this package that its modules may import, comma-separated,
  full dotted names. An entry allows itself and everything under it. Every salt_jax import a module of
  the package makes (its subpackages' modules included; imports within the package are free) must be
  allowed by an entry, and every entry must be used by at least one import.
"""

import ast
import functools
import os
import re

import pytest
from conftest import REPO

PACKAGE = os.path.join(REPO, "salt_jax")
# Stage of each top-level part of salt_jax: a module may import only its own stage or lower ones.
STAGES = {"errors": 0, "cli": 0, "paths": 0, "distributed": 0, "renamed": 0, "data": 1, "model": 2, "hf": 3, "kd": 4, "config": 5, "recipes": 5, "train": 6,
          "experiment": 7, "aot": 7, "main": 8, "bench": 8, "prepare": 8, "compile": 8, "teacher_cache": 8,
          "eval": 5, "sample": 8}


def _modules(package: str = PACKAGE) -> dict[str, str]:
    """Dotted name -> file of every module under `package` (a package's name maps to its __init__.py)."""
    out = {}
    for root, _, files in os.walk(package):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(package))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(root, f)
    return out


def _imports(path: str, name: str, modules) -> set[str]:
    """salt_jax modules imported by the module at `path` (a package import counts as its module)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    here = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "salt_jax"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..kd import teacher`
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else []))
            if base.split(".")[0] == "salt_jax":
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.add(sub if sub in modules else base)
    return {m for m in found if m != name and m != "salt_jax"}


def _graph(package: str = PACKAGE):
    modules = _modules(package)
    return {name: _imports(path, name, modules) for name, path in modules.items()}


@functools.cache
def _tree():
    """The real package's modules and import graph, parsed once per session."""
    return _modules(), _graph()


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


_ENTRY = re.compile(r"- ([A-Za-z_]\w*(\.py|/)): \S")


def _docstring(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _doc_problems(package: str, modules: dict[str, str], graph: dict[str, set[str]]) -> list[str]:
    """What is false or unreadable in the docstring of `package` (a dotted name): its module lines, its Imports line."""
    init = modules[package]
    lines = _docstring(init).splitlines()
    problems = []

    listed = []
    for line in (line for line in lines if line.startswith("- ")):
        entry = _ENTRY.match(line)
        if entry:
            listed.append(entry.group(1))
        else:
            problems.append(f"{package}: {line!r} is not a module line `- name.py: what it holds`")
    folder = os.path.dirname(init)
    present = {f for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    present |= {f + "/" for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f, "__init__.py"))}
    problems += [f"{package}: {f} is listed twice" for f in sorted({f for f in listed if listed.count(f) > 1})]
    problems += [f"{package}: {f} exists but has no `- {f}: ...` line" for f in sorted(present - set(listed))]
    problems += [f"{package}: {f} is listed but does not exist" for f in sorted(set(listed) - present)]

    import_lines = [line for line in lines if line.startswith("Imports:")]
    if len(import_lines) != 1:
        return problems + [f"{package}: {len(import_lines)} `Imports:` lines, not one"]
    text = import_lines[0].removeprefix("Imports:").strip()
    allowed = [] if text == "nothing" else [e.strip() for e in text.split(",")]
    for e in allowed:
        if e not in modules or e == "salt_jax" or _inside(e, package):
            problems.append(f"{package}: Imports entry {e!r} is not a salt_jax module or package outside {package}")
    uses = sorted({(a, b) for a, deps in graph.items() if _inside(a, package) for b in deps if not _inside(b, package)})
    problems += [f"{a} imports {b}, which the Imports line of {package} does not allow"
                 for a, b in uses if not any(_inside(b, e) for e in allowed)]
    problems += [f"{package}: the Imports line allows {e}, which none of its modules imports"
                 for e in allowed if e in modules and not any(_inside(b, e) for _, b in uses)]
    return problems


SUBPACKAGES = sorted(n for n, p in _modules().items() if p.endswith("__init__.py") and n != "salt_jax")


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_docstring_lists_its_modules_and_its_imports_truly(package):
    modules, graph = _tree()
    assert _doc_problems(package, modules, graph) == []


# A small fake salt_jax whose `data` package's docstring is true; each case below plants one falsehood.
_TRUE_DOC = """The fake data package.

- store.py: the store
- sub/: a subpackage,
  its entry on two lines

Imports: salt_jax.errors, salt_jax.paths
"""
_FILES = {
    "__init__.py": "", "errors.py": "", "paths.py": "", "model/__init__.py": "", "model/sharding.py": "",
    "data/store.py": "from salt_jax.errors import UserError\n\n\ndef f():\n    from salt_jax import paths\n",
    "data/sub/__init__.py": '"""Sub.\n\n- x.py: x\n\nImports: salt_jax.data.store\n"""\n',
    "data/sub/x.py": "from .. import store\n",
}


def _fake(tmp_path, doc: str, files: dict[str, str]) -> str:
    root = tmp_path / "salt_jax"
    for rel, text in {**_FILES, "data/__init__.py": f'"""{doc}"""\n', **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return str(root)


def test_the_docstring_checker_accepts_a_true_docstring(tmp_path):
    root = _fake(tmp_path, _TRUE_DOC, {})
    modules, graph = _modules(root), _graph(root)
    assert graph["salt_jax.data.sub.x"] == {"salt_jax.data.store"}  # the relative import, resolved
    assert _doc_problems("salt_jax.data", modules, graph) == []
    assert _doc_problems("salt_jax.data.sub", modules, graph) == []


@pytest.mark.parametrize("replace, files, reported", [
    (("salt_jax.errors, salt_jax.paths", "salt_jax.errors"), {},  # the line omits a lazy import
     "salt_jax.data.store imports salt_jax.paths, which the Imports line of salt_jax.data does not allow"),
    (None, {"data/store.py": "import salt_jax.model.sharding\nfrom salt_jax import errors, paths\n"},
     "salt_jax.data.store imports salt_jax.model.sharding, which the Imports line"),
    (None, {"data/sub/x.py": "from .. import store\n\n\ndef g():\n    from ...model import sharding\n"},
     "salt_jax.data.sub.x imports salt_jax.model.sharding, which the Imports line of salt_jax.data"),
    (("salt_jax.paths", "salt_jax.paths, salt_jax.model"), {}, "the Imports line allows salt_jax.model, which none"),
    (("salt_jax.paths", "salt_jax.paths, salt_jax.nosuch"), {}, "Imports entry 'salt_jax.nosuch' is not"),
    (("salt_jax.paths", "salt_jax.paths, salt_jax.data.store"), {}, "Imports entry 'salt_jax.data.store' is not"),
    (("salt_jax.paths", "salt_jax.paths,"), {}, "Imports entry '' is not"),
    (("Imports: salt_jax.errors, salt_jax.paths", "May import salt_jax.errors and salt_jax.paths."), {},
     "0 `Imports:` lines, not one"),
    (("Imports:", "Imports: salt_jax.errors\nImports:"), {}, "2 `Imports:` lines, not one"),
    (("- store.py: the store\n", ""), {}, "store.py exists but has no `- store.py: ...` line"),
    (None, {"data/loader.py": "from salt_jax import errors\n"}, "loader.py exists but has no"),
    (("- sub/", "- gone.py: gone\n- sub/"), {}, "gone.py is listed but does not exist"),
    (("- sub/", "- store.py: again\n- sub/"), {}, "store.py is listed twice"),
    (("- store.py: the store", "- store.py the store"), {}, "is not a module line"),
])
def test_the_docstring_checker_reports_a_planted_falsehood(tmp_path, replace, files, reported):
    doc = _TRUE_DOC.replace(*replace) if replace else _TRUE_DOC
    assert doc != _TRUE_DOC or files
    root = _fake(tmp_path, doc, files)
    problems = _doc_problems("salt_jax.data", _modules(root), _graph(root))
    assert any(reported in p for p in problems), problems
