"""The runtime's modules import downwards only: a walk of the import graph fails on a circle or an upward edge.

Every import counts, at module level or inside a function (a lazy import is still a dependency), except the
one hand-over the import path makes up into the package on a miss: ``_fatdispatch``'s ``full_path()``
importing ``fatdispatch._load``.  ``_fatdispatch`` is compiled (``src/fatdispatch/_fatdispatch.c``): its
imports are the modules its C source names to ``PyImport_ImportModule``.  CPython's importlib has the same shape (``_bootstrap`` handing over to
``_bootstrap_external``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"

# Bottom to top.  A module may import only modules of a strictly lower layer.
LAYERS: list[set[str]] = [
    {"_fatdispatch"},
    {"fatdispatch._errors", "fatdispatch._records", "fatdispatch._cuda"},
    {"fatdispatch._manifest", "fatdispatch._env", "fatdispatch._privfile"},
    {"fatdispatch._tables"},
    {"fatdispatch._aarch64"},
    {"fatdispatch._cpu", "fatdispatch._nvml", "fatdispatch._discover", "fatdispatch._frozen"},
    {"fatdispatch._gpu", "fatdispatch._select"},
    {"fatdispatch._load"},
    {"fatdispatch._report", "fatdispatch._pyinstaller", "fatdispatch.build", "fatdispatch.cmake", "fatdispatch.meson"},
    {"fatdispatch._machine", "fatdispatch._toolbox"},
    {"fatdispatch.__main__", "fatdispatch"},
]
HAND_OVER = ("_fatdispatch", "fatdispatch._load")
LEAF: set[str] = set()
COMPILED = {"_fatdispatch": SRC / "fatdispatch" / "_fatdispatch.c"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int:
    for i, group in enumerate(LAYERS):
        for g in group:
            if name == g or name.startswith(g + "."):
                return i
    raise AssertionError(f"{name} is in no layer of tests/test_layers.py: place it")


def imports(path: Path) -> set[str]:
    """Every fatdispatch module ``path`` imports (``from . import x`` names x, ``from .m import y`` names m)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            targets = [node.args[0].value]
        for t in targets:
            if t == "_fatdispatch" or t.startswith("fatdispatch") or t in LEAF:
                found.add(t)
    return found


def c_imports(path: Path) -> set[str]:
    """The modules a C source imports by name (``PyImport_ImportModule("...")``)."""
    return set(re.findall(r'PyImport_ImportModule\("([\w.]+)"\)', path.read_text()))


def _unit(name: str) -> str | None:
    for unit in ("fatdispatch.build", "fatdispatch._pyinstaller"):
        if name == unit or name.startswith(unit + "."):
            return unit
    return None


def _resolve(name: str, known: set[str]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def test_layers_import_downwards_only() -> None:
    files = sorted(SRC.rglob("*.py"))
    known = {module_name(f) for f in files} | LEAF | set(COMPILED)
    problems = []
    edges: dict[str, set[str]] = {}
    sources = [(module_name(f), imports(f)) for f in files] + [(m, c_imports(c)) for m, c in COMPILED.items()]
    for me, targets in sources:
        if me.startswith("fatdispatch._pyinstaller.hooks"):
            continue  # PyInstaller's hook files, run by PyInstaller
        mine = layer_of(me)
        for target in targets:
            if not (target == "_fatdispatch" or target.startswith("fatdispatch")):
                continue  # the standard library (the C source imports posixpath, _imp)
            dep = _resolve(target, known)
            if dep is None or dep == me or dep in LEAF or dep == "fatdispatch":
                # a constant of the package face (``__version__``): its __init__ imports nothing at import
                # time (test below), so such an edge can close no circle
                continue
            if _unit(me) is not None and _unit(me) == _unit(dep):
                continue  # inside one sub-package of the top floor (build/, _pyinstaller/)
            edges.setdefault(me, set()).add(dep)
            if (me, dep) == HAND_OVER:
                continue
            if layer_of(dep) >= mine:
                problems.append(f"{me} (layer {mine}) imports {dep} (layer {layer_of(dep)})")
    assert not problems, "\n".join(problems)
    assert edges.get("_fatdispatch") == {"fatdispatch._load"}  # the hand-over is real, and the only one


def test_the_package_face_imports_nothing_at_import_time() -> None:
    """``fatdispatch/__init__.py`` defines its API on first use: importing a submodule costs no more."""
    tree = ast.parse((SRC / "fatdispatch" / "__init__.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert top == []


def test_the_build_side_never_imports_the_loader() -> None:
    """The manifest is the contract: the build side imports _manifest, never the import path or the loader."""
    for f in sorted((SRC / "fatdispatch" / "build").rglob("*.py")):
        deps = imports(f)
        assert not deps & {"_fatdispatch", "fatdispatch._load", "fatdispatch._select", "fatdispatch._gpu"}, f


def test_the_import_path_and_the_manifest_agree_on_the_contract_names() -> None:
    import _fatdispatch

    from fatdispatch import _manifest

    assert (_fatdispatch.VARIANTS_SUFFIX, _fatdispatch.MANIFEST_NAME) == (_manifest.VARIANTS_SUFFIX,
                                                                          _manifest.MANIFEST_NAME)


def test_the_wiring_line_is_the_documented_contract(tmp_path: Path) -> None:
    """The line frozen into every wheel built with fatdispatch: exactly what README and the docstrings show,
    and a package wired with it imports (here without any build: the folder is empty, so the import fails
    with fatdispatch's own error, naming the module)."""
    import subprocess
    import sys

    from fatdispatch.build._setuptools import wire_init, wiring_line

    line = wiring_line(["_core"])
    assert line == '__import__("_fatdispatch").install(__name__, ["_core"])  ' \
                   '# fatdispatch: bind the best build of each fat module\n'
    assert line.strip() in (ROOT / "README.md").read_text()
    assert line.strip() in (ROOT / "examples" / "fatdemo" / "src" / "fatdemo" / "__init__.py").read_text()
    pkg = tmp_path / "wired"
    (pkg / "_core.variants").mkdir(parents=True)
    (pkg / "__init__.py").write_text(wire_init('"""doc"""\nX = 1\n', ["_core"]))
    out = subprocess.run([sys.executable, "-c", "import wired; print(wired.X); import wired._core"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.stdout.strip() == "1" and "ManifestError" in out.stderr and "manifest.json" in out.stderr
    assert out.stderr.count("Traceback") == 1
