"""Record this process's raw CPU facts as a test fixture (JSON on stdout).

    python build_tools/capture_cpu.py NAME > tests/fixtures/cpu/NAME.json
    qemu-x86_64 -cpu Haswell .venv/bin/python build_tools/capture_cpu.py qemu-haswell > tests/fixtures/cpu/qemu-haswell.json

The fixture holds the raw CPUID leaves and XCR0 exactly as fatdispatch's
compiled helper returns them, plus the probe's verdict at capture time, so the
pure parser can be replayed against real machines in tests.
"""

from __future__ import annotations

import json
import os
import sys

import _fatdispatch
from fatdispatch import _cpu


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "host"
    raw = _fatdispatch.x86()
    cpu = _cpu.probe_cpu()
    print(json.dumps({
        "name": name,
        "machine": os.uname().machine,
        "raw": {k: list(v) if isinstance(v, tuple) else v for k, v in raw.items()},
        "expected": {"x86_64_level": cpu.x86_64_level, "features": sorted(cpu.features)},
    }, indent=1))


if __name__ == "__main__":
    main()
