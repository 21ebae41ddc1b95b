"""The CPU probe: recorded machines replayed through the pure parser, masking rules, and the live probe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import CPU_FIXTURES, cpu_fixture, raw_fixture
from fatdispatch import _cpu

# The x86 CPUID decoder (x86_decode, x86_levels, cpu()) is compiled into _fatdispatch only on x86: the tests
# that replay recorded x86 machines through it, or compare it with the live x86 probe, need that build.
# (Under an aarch64 interpreter they skip; the aarch64 decoding is tested on recorded machines in test_aarch64.py.)
_native = _cpu.native()
needs_x86_helper = pytest.mark.skipif(_native is None or not hasattr(_native, "x86_decode"),
                                      reason="needs the x86 build of _fatdispatch (its CPUID decoder is x86-only C)")


def _can_start_itself() -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "pass"], capture_output=True).returncode == 0
    except OSError:  # ENOEXEC: an emulated interpreter (qemu-user) without binfmt_misc cannot exec itself
        return False


needs_subprocess = pytest.mark.skipif(not _can_start_itself(), reason="this interpreter cannot start a copy of "
                                      "itself (an emulated one under qemu-user without binfmt_misc)")

V1 = {"cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2", "syscall"}
V2 = {"cx16", "lahf_lm", "popcnt", "sse3", "sse4_1", "sse4_2", "ssse3"}
V3 = {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "osxsave"}
V4 = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}

# What the recorded machines are known to be (qemu's CPU models; this machine's Xeon).
KNOWN = {
    "qemu-qemu64": (1, V1, {"popcnt", "sse4_2", "avx"}),
    "qemu-nehalem": (2, V1 | V2, {"avx", "avx2", "movbe"}),
    "qemu-haswell": (3, V1 | V2 | V3, {"avx512f"}),
    "host-sapphirerapids-vm": (4, V1 | V2 | V3 | V4 | {"amx_tile", "avx512_fp16"}, set()),
}


def test_every_fixture_is_checked() -> None:
    assert set(CPU_FIXTURES) == set(KNOWN)


@needs_x86_helper
@pytest.mark.parametrize("name", sorted(KNOWN))
def test_recorded_machine_levels(name: str) -> None:
    level, must, must_not = KNOWN[name]
    cpu = cpu_fixture(name)
    assert cpu.x86_64_level == level
    assert must <= cpu.features
    assert not (must_not & cpu.features)


def test_levels_nest() -> None:
    feats = frozenset(V1 | V2 | V4 | (V3 - {"avx2"}))
    assert _cpu.x86_64_level(feats) == 2  # AVX-512 without AVX2 is not v4


def _mask(raw: dict, leaf: str, reg: int, bit: int) -> dict:
    regs = list(raw[leaf])
    regs[reg] &= ~(1 << bit)
    return dict(raw, **{leaf: tuple(regs)})


@needs_x86_helper
def test_osxsave_off_hides_avx_family() -> None:
    raw = _mask(raw_fixture("host-sapphirerapids-vm"), "1", 2, 27)
    raw["xcr0"] = None  # the helper never executes XGETBV without OSXSAVE
    cpu = _cpu.x86_from_cpuid(raw)
    assert cpu.x86_64_level == 2
    assert not {"avx", "avx2", "fma", "avx512f", "amx_tile"} & cpu.features
    assert any("OSXSAVE is off" in n for n in cpu.notes)


@needs_x86_helper
def test_xcr0_without_avx512_state() -> None:
    raw = dict(raw_fixture("host-sapphirerapids-vm"), xcr0=0x7)  # x87|SSE|AVX, no opmask/ZMM
    cpu = _cpu.x86_from_cpuid(raw)
    assert cpu.x86_64_level == 3
    assert "avx2" in cpu.features and "avx512f" not in cpu.features and "avx512_fp16" not in cpu.features
    assert any("ZMM" in n and "avx512f" in n for n in cpu.notes)


@needs_x86_helper
def test_xcr0_without_amx_state_and_refused_permission() -> None:
    raw = raw_fixture("host-sapphirerapids-vm")
    assert "amx_tile" not in _cpu.x86_from_cpuid(dict(raw, xcr0=raw["xcr0"] & ~0x60000)).features
    refused = _cpu.x86_from_cpuid(dict(raw, amx_permission=False))
    assert "amx_tile" not in refused.features and "avx512f" in refused.features
    assert any("ARCH_REQ_XCOMP_PERM" in n for n in refused.notes)


@needs_x86_helper
def test_avx2_without_lzcnt_or_movbe_is_v2() -> None:
    raw = raw_fixture("qemu-haswell")
    no_lzcnt = _mask(raw, "0x80000001", 2, 5)
    no_movbe = _mask(raw, "1", 2, 22)
    for r in (no_lzcnt, no_movbe):
        cpu = _cpu.x86_from_cpuid(r)
        assert "avx2" in cpu.features and cpu.x86_64_level == 2


@needs_x86_helper
def test_rosetta_hides_avx512() -> None:
    cpu = _cpu.x86_from_cpuid(dict(raw_fixture("host-sapphirerapids-vm"), translated=True))
    assert cpu.x86_64_level == 3 and not any(f.startswith(("avx512", "amx")) for f in cpu.features)
    assert any("Rosetta" in n for n in cpu.notes)


@needs_x86_helper
def test_valgrind_like_cpuid_without_avx512_bits() -> None:
    # valgrind reports CPUID with the AVX-512 bits cleared; the probe must believe CPUID, not /proc/cpuinfo.
    raw = raw_fixture("host-sapphirerapids-vm")
    for bit in (16, 17, 28, 30, 31):
        raw = _mask(raw, "7", 1, bit)
    assert _cpu.x86_from_cpuid(raw).x86_64_level == 3


@needs_x86_helper
def test_macos_lazy_avx512_state_trusts_sysctl() -> None:
    raw = dict(raw_fixture("host-sapphirerapids-vm"), xcr0=0x7, macos_avx512=True)
    assert _cpu.x86_from_cpuid(raw).x86_64_level == 4


@needs_x86_helper
def test_disable_recomputes_level() -> None:
    cpu = cpu_fixture("host-sapphirerapids-vm")
    assert _cpu.without(cpu, frozenset({"avx512f"}), "test").x86_64_level == 3
    no_avx = _cpu.without(cpu, frozenset({"avx"}), "test")
    assert no_avx.x86_64_level == 2 and "avx2" not in no_avx.features and "avx512bw" not in no_avx.features


def test_cpuinfo_parser() -> None:
    text = ("processor\t: 0\nflags\t\t: fpu cx8 cmov mmx fxsr sse sse2 syscall pni ssse3 cx16 sse4_1 sse4_2 popcnt "
            "lahf_lm xsave avx abm bmi1 avx2 bmi2 fma f16c movbe\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    cpu = _cpu.from_cpuinfo(text, "x86_64")
    assert cpu.x86_64_level == 3 and "sse3" in cpu.features and "lzcnt" in cpu.features
    arm = _cpu.from_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp sve\n", "aarch64")
    assert arm.features == {"fp", "asimd", "asimddp", "sve"} and arm.x86_64_level is None


def test_aarch64_hwcaps() -> None:
    cpu = _cpu.aarch64_from_hwcaps((1 << 0) | (1 << 1) | (1 << 20) | (1 << 22), (1 << 1) | (1 << 13))
    assert cpu.features == {"fp", "asimd", "asimddp", "sve", "sve2", "i8mm"}
    mac = _cpu.from_sysctl({"hw.optional.arm.FEAT_DotProd": 1, "hw.optional.neon": 1,
                            "hw.optional.arm.FEAT_I8MM": 0}, "aarch64")
    assert mac.features == {"fp", "asimd", "asimddp"}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="needs an x86-64 machine")
def test_live_probe_agrees_with_proc_cpuinfo() -> None:
    cpu = _cpu.probe_cpu()
    assert cpu.source == "cpuid"
    with open("/proc/cpuinfo") as f:
        from_kernel = _cpu.from_cpuinfo(f.read(), "x86_64")
    # osxsave is inferred for /proc/cpuinfo; AMX also needs the per-process permission the kernel can't show.
    assert from_kernel.features - {"osxsave"} == cpu.features - {"osxsave"}
    assert from_kernel.x86_64_level == cpu.x86_64_level


@pytest.mark.skipif(os.uname().machine != "aarch64", reason="needs an aarch64 machine (or interpreter under qemu 10)")
def test_live_probe_agrees_with_proc_cpuinfo_aarch64() -> None:
    """On aarch64 the live probe is HWCAP, and the /proc/cpuinfo fallback (every core) says the same."""
    from fatdispatch import _aarch64

    cpu = _cpu.probe_cpu()
    assert cpu.arch == "aarch64" and cpu.source == "hwcap" and cpu.x86_64_level is None
    assert {"fp", "asimd"} <= cpu.features
    with open("/proc/cpuinfo") as f:
        gap = _aarch64.disagreement(cpu.features, f.read())
    assert not gap, gap.describe()


NUMPY_NAMES = {"SSE": "sse", "SSE2": "sse2", "SSE3": "sse3", "SSSE3": "ssse3", "SSE41": "sse4_1", "SSE42": "sse4_2",
               "POPCNT": "popcnt", "AVX": "avx", "F16C": "f16c", "FMA3": "fma", "AVX2": "avx2",
               "AVX512F": "avx512f", "AVX512CD": "avx512cd", "AVX512_FP16": "avx512_fp16"}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="compares x86 feature names with NumPy's")
def test_live_probe_agrees_with_numpy() -> None:
    np = pytest.importorskip("numpy")
    from numpy._core._multiarray_umath import __cpu_features__ as feats  # type: ignore[attr-defined]

    cpu = _cpu.probe_cpu()
    checked = 0
    for np_name, ours in NUMPY_NAMES.items():
        if np_name in feats:
            assert feats[np_name] == (ours in cpu.features), np_name
            checked += 1
    assert checked >= 10


@needs_subprocess
def test_probe_runs_once_across_threads() -> None:
    code = ("import threading, fatdispatch._cpu as c\n"
            "ts=[threading.Thread(target=c.probe_cpu) for _ in range(32)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\nprint(c.cpu_probe_count)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


@needs_subprocess
def test_probe_imports_nothing_heavy() -> None:
    """The probe through the package loads no heavy module (its speed is a benchmark: benchmarks/run_all.py)."""
    code = ("import sys\nbefore=set(sys.modules)\nimport fatdispatch._cpu as c\nc.probe_cpu()\n"
            "bad=[m for m in ('numpy','subprocess','ctypes','json','re','typing','dataclasses','threading','pynvml',"
            "'__future__','importlib.util') if m in sys.modules and m not in before]\nprint(','.join(bad))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.strip() == "", f"the probe imported {out.strip()}"


@needs_x86_helper
def test_compiled_cpu_table_is_generated_from_the_json_table() -> None:
    """_cpu_table.h (compiled into _fatdispatch) must be what build_tools/gen_cpu_table.py makes of
    cpu_features.json."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(root, "build_tools", "gen_cpu_table.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import _fatdispatch
    from fatdispatch._tables import feature_table

    levels = feature_table()["x86"]["levels"]
    assert list(_fatdispatch.x86_levels()) == [frozenset(levels[n]) for n in ("1", "2", "3", "4")]


@needs_x86_helper
def test_compiled_probe_agrees_with_the_decoder() -> None:
    """_fatdispatch.cpu() (the host probe in one call) says what x86_from_cpuid says of the same raw words."""
    import _fatdispatch

    found = _fatdispatch.cpu()
    cpu = _cpu.x86_from_cpuid(found["raw"])
    assert found["arch"] == "x86_64" and found["vendor"] == cpu.vendor
    assert found["features"] == cpu.features and found["x86_64_level"] == cpu.x86_64_level
    assert _cpu.masked_notes(found["masked"], found["raw"]) == cpu.notes
    assert _cpu._probe_cpu_uncached() == cpu
    assert set(found["raw"]) >= {"max_leaf", "vendor", "1", "7", "7.1", "max_ext", "0x80000001", "xcr0"}


@needs_x86_helper
def test_compiled_module_is_the_import_path_and_the_primitives() -> None:
    """The one compiled module holds the import path (registry, finder/loader, file checks, private-file reader,
    the pick cache) and what Python cannot do (CPUID/XGETBV and its decoder, auxv, sysctl, AMX); nothing of
    the decision (manifest, selection, reasons), which is Python's alone."""
    import _fatdispatch

    public = {n for n in dir(_fatdispatch) if not n.startswith("_") and callable(getattr(_fatdispatch, n))}
    primitives = {"x86", "x86_decode", "x86_levels", "cpu", "request_amx", "hwcaps", "sysctl", "processor_feature"}
    import_path = {"install", "register", "find_spec", "invalidate_caches", "create_module", "exec_module",
                   "check_build", "load_extension", "cache_bases", "open_dir", "read_private", "pick_name", "cpu_words",
                   "gpu_facts_key", "driver_present", "pick_key", "pick_entry", "read_pick", "ModuleSpec"}
    assert public <= primitives | import_path, public - primitives - import_path
    assert {"x86", "cpu", "x86_decode", "install", "check_build", "pick_key"} <= public


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the link flags are Linux's (setup.py)")
def test_compiled_module_is_bound_at_load_and_mapped_twice() -> None:
    """setup.py links ``_fatdispatch`` with ``-z now`` (every symbol bound at load: no lazy-binding trampoline on
    the import path, and the whole GOT read-only after load, full RELRO) and ``-z noseparate-code`` (two
    mappings, not four: each costs tens of microseconds on a VM, on every import of every fat package)."""
    import struct

    import _fatdispatch

    with open(_fatdispatch.__file__, "rb") as f:  # a 64-bit little-endian ELF (x86-64, aarch64), read by hand:
        data = f.read()                            # the emulated aarch64 interpreter runs this test too
    assert data[:6] == b"\x7fELF\x02\x01"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    segments = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize) for i in range(phnum)]
    PT_LOAD, PT_DYNAMIC, PT_GNU_RELRO, PF_W, DT_FLAGS, DF_BIND_NOW = 1, 2, 0x6474E552, 2, 30, 8
    loads = [s for s in segments if s[0] == PT_LOAD]
    dyn = next(s for s in segments if s[0] == PT_DYNAMIC)
    tags = dict(struct.unpack_from("<qQ", data, dyn[2] + i * 16) for i in range(dyn[5] // 16))
    assert any(s[0] == PT_GNU_RELRO for s in segments), segments
    assert tags.get(DT_FLAGS, 0) & DF_BIND_NOW, tags
    assert [bool(s[1] & PF_W) for s in loads] == [False, True], [hex(s[1]) for s in loads]


@pytest.mark.parametrize("compiler", ["cc", "aarch64-linux-gnu-gcc"])
def test_helper_compiles_cleanly(compiler: str) -> None:
    """The compiled module compiles without a warning, on x86-64 and (CPUID left out) aarch64."""
    import shutil
    import sysconfig

    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} missing (build_tools/setup_env.sh installs gcc-aarch64-linux-gnu)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for source in ("_cpuid.c", "_fatdispatch.c"):
        proc = subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Wextra", "-Wno-unused-parameter",
                               "-Wno-missing-field-initializers", "-Werror", f"-I{sysconfig.get_paths()['include']}",
                               # Debian's multiarch pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>
                               "-idirafter", os.path.dirname(sysconfig.get_paths()["include"]),
                               os.path.join(root, "src", "fatdispatch", source)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
