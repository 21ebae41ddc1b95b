#!/usr/bin/env bash
# A project nobody here wrote, built fat: contourpy (matplotlib's contouring, C++/pybind11, meson-python).
# Downloads its sdist from PyPI, patches its build files minimally (below), builds a fat wheel (x86-64 v1-v4),
# installs it and the stock PyPI wheel in two fresh environments, runs contourpy's own test suite on the fat one
# (natively and under qemu -cpu Nehalem/Haswell), and checks every build against the stock wheel's output.
#
#   bash build_tools/third_party/contourpy.sh [WORKDIR]      (default /tmp/fat-contourpy; needs PyPI)
#
# The changes to contourpy (all made by this script, nothing of contourpy is kept in this repository):
#   pyproject.toml           "fatdispatch" added to [build-system] requires and to [project] dependencies
#   src/meson.build          its py3.extension_module('_contourpy', ...) replaced by the same sources and arguments
#                            handed to fatdispatch's Meson helper (subdir('fatdispatch-meson')), plus
#                            -ffp-contract=off: without it gcc fuses a*b+c into FMA under -march=x86-64-v3, and the
#                            v3/v4 builds' output differed from the stock wheel's (one path-code array: a contour
#                            closed differently); with it every build's output is bit-identical (measured 2026-12-01)
#   src/fatdispatch-meson/   written by `python -m fatdispatch.build meson-files`
#   lib/contourpy/__init__.py  the wiring line, added by fatdispatch.build's own wire_init
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${1:-/tmp/fat-contourpy}"
VERSION="${CONTOURPY_VERSION:-1.3.3}"
PY=${PYTHON:-python3}
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
quiet() { grep -v -e "^WARNING: Location" -e "^ *$" || true; }

echo "== build environment: fatdispatch from $ROOT, meson-python, pybind11"
"$PY" -m venv build-env
build-env/bin/python -m pip install -q --disable-pip-version-check "$ROOT" meson-python meson ninja \
  "pybind11>=2.13.2,!=2.13.3" 2>&1 | quiet
export PATH="$WORK/build-env/bin:$PATH"
build-env/bin/python -m pip wheel -q --no-deps -w wheels "$ROOT" 2>&1 | quiet

echo "== contourpy $VERSION: sdist and stock wheel from PyPI"
build-env/bin/python -m pip download -q --no-binary :all: --no-deps --no-build-isolation -d sdist \
  "contourpy==$VERSION" 2>&1 | quiet
build-env/bin/python -m pip download -q --only-binary :all: --no-deps -d stock "contourpy==$VERSION" 2>&1 | quiet
tar xzf sdist/contourpy-"$VERSION".tar.gz
SRC="$WORK/contourpy-$VERSION"

echo "== patching its build files"
build-env/bin/python - "$SRC" <<'EOF'
import pathlib, re, sys
from fatdispatch.build._setuptools import wire_init
src = pathlib.Path(sys.argv[1])
pp = src / "pyproject.toml"
text = pp.read_text()
text = text.replace('requires = [\n', 'requires = [\n    "fatdispatch",\n', 1)
text = text.replace('dependencies = [\n', 'dependencies = [\n    "fatdispatch",\n', 1)
assert text.count('"fatdispatch"') == 2, "pyproject.toml layout changed"
pp.write_text(text)
mb = src / "src" / "meson.build"
text = mb.read_text()
m = re.search(r"ext = py3\.extension_module\(\n  '_contourpy',\n  (\[.*?\]),\n  cpp_args: cpp_args,\n"
              r"  dependencies: \[pybind11_dep\],\n  gnu_symbol_visibility: 'hidden',\n  install: true,\n"
              r"  subdir: 'contourpy',\n\)\n", text, re.S)
assert m, "src/meson.build layout changed"
text = text.replace(m.group(0), f"""# fatdispatch: one build of _contourpy per x86-64 level, bound at import
fatdispatch_python = py3
fatdispatch_module = 'contourpy._contourpy'
fatdispatch_sources = files({m.group(1)})
fatdispatch_language = 'cpp'
fatdispatch_c_args = cpp_args + ['-ffp-contract=off']  # v3/v4 bit-identical to the stock wheel (no FMA fusion)
fatdispatch_dependencies = [pybind11_dep]
fatdispatch_kwargs = {{'gnu_symbol_visibility': 'hidden'}}
subdir('fatdispatch-meson')
""")
mb.write_text(text)
init = src / "lib" / "contourpy" / "__init__.py"
init.write_text(wire_init(init.read_text(), ["_contourpy"]))
EOF
build-env/bin/python -m fatdispatch.build meson-files --variants baseline x86-64-v2 x86-64-v3 x86-64-v4 \
  --dir "$SRC/src/fatdispatch-meson" | quiet
mkdir orig && tar xzf sdist/contourpy-"$VERSION".tar.gz -C orig
(cd "$WORK" && diff -ru --exclude=fatdispatch-meson "orig/contourpy-$VERSION" "contourpy-$VERSION") || true

echo "== building the fat wheel"
start=$(date +%s)
build-env/bin/python -m pip wheel -q --no-deps --no-build-isolation -w wheels "$SRC" 2>&1 | quiet
echo "built in $(( $(date +%s) - start )) s: $(ls wheels/contourpy-*.whl)"
build-env/bin/python -m fatdispatch inspect wheels/contourpy-*.whl

echo "== two fresh environments: the fat wheel, the stock wheel"
"$PY" -m venv fat && fat/bin/python -m pip install -q --disable-pip-version-check numpy pytest wurlitzer \
  wheels/fatdispatch-*.whl wheels/contourpy-*.whl 2>&1 | quiet
"$PY" -m venv stockenv && stockenv/bin/python -m pip install -q --disable-pip-version-check numpy \
  stock/contourpy-*.whl 2>&1 | quiet

echo "== agreement with the stock wheel, every build this CPU runs"
AGREE="$ROOT/build_tools/third_party/contourpy_agree.py"
(cd / && "$WORK/stockenv/bin/python" "$AGREE" --dump "$WORK/stock.npz") | sed "s/^/stock: /"
status=0
for b in auto baseline x86-64-v2 x86-64-v3 x86-64-v4; do
  force=(); [ "$b" = auto ] || force=("FATDISPATCH_FORCE=$b")
  if out=$(cd / && env "${force[@]}" "$WORK/fat/bin/python" "$AGREE" --compare "$WORK/stock.npz" 2>&1); then
    echo "$out" | sed "s/^/fat $b: /"
  elif echo "$out" | grep -q "this machine cannot run it"; then
    echo "fat $b: skipped, this CPU cannot run it"
  else
    echo "$out" | tail -3 | sed "s/^/fat $b: /"; status=1
  fi
done

echo "== contourpy's own tests on the fat wheel (-m 'not image': no matplotlib here)"
cp -r "$SRC/tests" tests
(cd "$WORK" && fat/bin/python -m pytest tests -q -p no:cacheprovider -m "not image" 2>&1 | tail -5) || status=1

if command -v qemu-x86_64 >/dev/null; then
  echo "== emulated CPUs: the pick and contourpy's minimal tests (numpy needs x86-64-v2, so no qemu64)"
  for model in Nehalem Haswell; do
    (cd / && qemu-x86_64 -cpu "$model" "$WORK/fat/bin/python" -c \
      "import contourpy; print('$model ->', contourpy._contourpy.__fatdispatch_variant__)" 2>/dev/null) || status=1
    (cd "$WORK" && qemu-x86_64 -cpu "$model" fat/bin/python -m pytest tests/test_minimal.py -q \
      -p no:cacheprovider -m "not image" 2>/dev/null | tail -1 | sed "s/^/$model: contourpy tests: /")
  done
fi
exit $status
