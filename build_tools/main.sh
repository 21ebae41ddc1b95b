#!/usr/bin/env bash
# The main job: set up, build the example fat wheel (every CPU and CUDA build), repair it with auditwheel,
# install it into .venv, import it, show what was picked and why, and how fast each build runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash build_tools/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
PY=.venv/bin/python

rm -rf dist && mkdir -p dist/raw dist/repaired
echo; echo "== building fatdispatch and the fatdemo fat wheel"
$PY -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w dist/raw . examples/fatdemo
echo; echo "== auditwheel repair (keeping the NVIDIA driver library out of the wheel)"
$PY -m auditwheel repair --exclude 'libcuda.so.*' -w dist/repaired dist/raw/fatdemo-*.whl
WHEEL=$(ls dist/repaired/fatdemo-*.whl)
$PY -m fatdispatch inspect "$WHEEL"

echo; echo "== installing $WHEEL into .venv"
$PY -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"

echo; echo "== import fatdemo: what was picked, and why not the others"
(cd / && FATDISPATCH_VERBOSE=1 "$OLDPWD/$PY" -c "import fatdemo; print('fatdemo bound', fatdemo.variant(), fatdemo.build_info()['kernel'])")
$PY -m fatdispatch report

echo; echo "== kernel speed of every build this machine can run (fresh interpreters, interleaved, medians)"
$PY benchmarks/kernel_speed.py --quick || echo "note: the automatic pick measured more than 5% below the fastest build in this (quick, noisy) run"
