"""Record an aarch64 process's raw CPU facts as a test fixture (JSON on stdout); stdlib only.

    .arm64/bin/qemu-aarch64-10 -cpu neoverse-v1 -L .arm64/rootfs .arm64/rootfs/usr/bin/python3.11 \\
        build_tools/capture_aarch64.py qemu-neoverse-v1 > tests/fixtures/cpu/aarch64/qemu-neoverse-v1.json

The fixture holds AT_HWCAP/AT_HWCAP2 (from fatdispatch's compiled helper where it is importable, else
getauxval through ctypes: the same libc call) and the whole /proc/cpuinfo text, nothing decoded, so the pure
decoders in fatdispatch._aarch64 are replayed against what the machine really said.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

AT_HWCAP, AT_HWCAP2 = 16, 26


def hwcaps() -> tuple[int, int, str]:
    try:
        import _fatdispatch

        h1, h2 = _fatdispatch.hwcaps()
        return int(h1), int(h2), "_fatdispatch.hwcaps()"
    except (ImportError, AttributeError):
        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        return int(getauxval(AT_HWCAP)), int(getauxval(AT_HWCAP2)), "getauxval (ctypes)"


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "host"
    h1, h2, source = hwcaps()
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        cpuinfo = f.read()
    print(json.dumps({
        "name": name,
        "machine": os.uname().machine,
        "hwcap": h1,
        "hwcap2": h2,
        "cpuinfo": cpuinfo,
        "comment": f"AT_HWCAP/AT_HWCAP2 from {source} and /proc/cpuinfo as this process saw them; "
                   "recorded with build_tools/capture_aarch64.py" + (f"; {sys.argv[2]}" if len(sys.argv) > 2 else ""),
    }, indent=1))


if __name__ == "__main__":
    main()
