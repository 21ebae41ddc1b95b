"""aarch64: the probe's decoding on recorded machines (always), and the real thing on emulated CPUs (qemu 10).

The emulated part needs build_tools/arm64_env.sh's .arm64/ (an arm64 CPython 3.11 rootfs and qemu-aarch64 10;
build_tools/setup_env.sh runs it) and aarch64-linux-gnu-gcc; it cross-builds fatdispatch and fatdemo into
linux_aarch64 wheels from this checkout, installs them for the emulated interpreter and starts one interpreter
per CPU model.  Host-side throughout: no emulated process starts another one.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fatdispatch import _aarch64
from fatdispatch._manifest import parse_manifest
from fatdispatch._records import Hardware, no_gpus
from fatdispatch._select import select

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "cpu" / "aarch64"
EXAMPLE = ROOT / "examples" / "fatdemo"
ARM64 = Path(os.environ.get("FATDISPATCH_ARM64_ENV", ROOT / ".arm64"))
QEMU = ARM64 / "bin" / "qemu-aarch64-10"
ROOTFS = ARM64 / "rootfs"
PY = ROOTFS / "usr" / "bin" / "python3.11"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


# What the recorded models are (Arm's documents for the real cores): version, must have, must lack.
KNOWN = {
    "qemu-cortex-a53": ("8.0a", {"fp", "asimd", "crc32", "aes"}, {"atomics", "asimddp", "sve"}),
    "qemu-cortex-a72": ("8.0a", {"fp", "asimd", "crc32", "aes"}, {"atomics", "asimddp", "sve"}),
    "qemu-neoverse-n1": ("8.2a", {"atomics", "asimdrdm", "dcpop", "asimddp", "lrcpc"}, {"sve", "i8mm"}),
    "qemu-neoverse-v1": ("8.4a", {"asimddp", "sve", "i8mm", "bf16", "svebf16", "paca"}, {"sve2", "sb"}),
    "qemu-neoverse-n2": ("9.0a", {"asimddp", "sve", "sve2", "i8mm", "bf16", "bti"}, {"sme"}),
    "qemu-a64fx": ("8.2a", {"sve", "atomics", "fphp", "asimdhp", "fcma"}, {"asimddp", "sve2", "jscvt"}),
    "qemu-max": ("9.0a", {"sve", "sve2", "i8mm", "asimddp"}, set()),
    "qemu-max-sve-off": ("8.6a", {"i8mm", "bf16", "asimddp"}, {"sve", "sve2"}),
}
QEMU10 = sorted(KNOWN)


def test_every_fixture_is_checked() -> None:
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(KNOWN) | {"qemu7-cortex-a72"}


@pytest.mark.parametrize("name", QEMU10)
def test_recorded_hwcaps_decode(name: str) -> None:
    version, must, must_not = KNOWN[name]
    d = fixture(name)
    cpu = _aarch64.from_hwcaps(d["hwcap"], d["hwcap2"])
    assert (cpu.version, cpu.source) == (version, "hwcap")
    assert must <= cpu.features and not (must_not & cpu.features), sorted(cpu.features)
    assert any(f"Armv{version[:-1]}-A" in n for n in cpu.notes)


@pytest.mark.parametrize("name", QEMU10)
def test_cpuinfo_fallback_agrees_with_hwcap(name: str) -> None:
    """qemu 10 emulates /proc/cpuinfo per model: the fallback must give exactly the HWCAP answer."""
    d = fixture(name)
    hw = _aarch64.from_hwcaps(d["hwcap"], d["hwcap2"])
    fb = _aarch64.from_cpuinfo(d["cpuinfo"])
    assert not _aarch64.disagreement(hw.features, d["cpuinfo"]), _aarch64.disagreement(hw.features, d["cpuinfo"])
    assert (fb.features, fb.version, fb.source) == (hw.features, hw.version, "proc-cpuinfo")
    assert len(_aarch64.cpuinfo_cores(d["cpuinfo"])) >= 1


def test_qemu7_host_cpuinfo_is_caught() -> None:
    """qemu 7.2 shows the x86 host's /proc/cpuinfo to an aarch64 guest: the check says so, the fallback knows nothing."""
    d = fixture("qemu7-cortex-a72")
    hw = _aarch64.from_hwcaps(d["hwcap"], d["hwcap2"])
    gap = _aarch64.disagreement(hw.features, d["cpuinfo"])
    assert gap and gap.only_hwcap == hw.features and not gap.only_cpuinfo
    assert "that /proc/cpuinfo lacks" in gap.describe()
    fb = _aarch64.from_cpuinfo(d["cpuinfo"])
    assert fb.features == frozenset() and fb.version is None
    assert any("describes an x86 CPU" in n for n in fb.notes)


def test_big_little_uses_what_every_core_has() -> None:
    """Exynos 9810-style: big cores without LSE atomics/RDM beside LITTLE Armv8.2 cores (synthetic, from n1's file)."""
    text = fixture("qemu-neoverse-n1")["cpuinfo"]
    blocks = text.strip().split("\n\n")
    assert len(blocks) >= 2
    big = blocks[1].replace(" atomics", "").replace(" asimdrdm", "").replace(" asimddp", "")
    mixed = "\n\n".join([blocks[0], big, *blocks[2:]]) + "\n"
    cores = _aarch64.cpuinfo_cores(mixed)
    assert "atomics" in cores[0] and "atomics" not in cores[1]
    cpu = _aarch64.from_cpuinfo(mixed)
    assert not {"atomics", "asimdrdm", "asimddp"} & cpu.features and {"fp", "asimd", "dcpop"} <= cpu.features
    assert cpu.version == "8.0a" and any("cores differ" in n for n in cpu.notes)
    # and the check against an HWCAP answer that has them names exactly those
    d = fixture("qemu-neoverse-n1")
    gap = _aarch64.disagreement(_aarch64.decode_hwcaps(d["hwcap"], d["hwcap2"]), mixed)
    assert gap.only_hwcap == {"atomics", "asimdrdm", "asimddp"} and not gap.only_cpuinfo


def test_versions_nest_on_their_base() -> None:
    n2 = _aarch64.from_hwcaps(**{k: fixture("qemu-neoverse-n2")[k] for k in ("hwcap", "hwcap2")})
    assert _aarch64.version(n2.features) == "9.0a"
    assert _aarch64.version(n2.features - {"bti"}) == "8.4a"  # 9.0a is 8.5a + SVE2: without BTI neither holds
    assert _aarch64.version(n2.features - {"i8mm"}) == "9.0a"  # 9.0a does not need 8.6a's
    assert _aarch64.version({"fp"}) is None and _aarch64.version({"fp", "asimd", "atomics"}) == "8.0a"


def test_probe_takes_hwcap_then_cpuinfo_then_nothing() -> None:
    d = fixture("qemu-neoverse-v1")
    by_hwcap = _aarch64.probe(lambda: (d["hwcap"], d["hwcap2"]), lambda: "must not be read")
    assert by_hwcap.source == "hwcap" and "sve" in by_hwcap.features
    assert _aarch64.probe(None, lambda: d["cpuinfo"]).features == by_hwcap.features
    nothing = _aarch64.probe(None, lambda: None)
    assert nothing.features == frozenset() and nothing.source == "none"
    rec = _aarch64.probe_cpu_record(lambda: (d["hwcap"], d["hwcap2"]))
    assert (rec.arch, rec.features, rec.x86_64_level) == ("aarch64", by_hwcap.features, None)


def test_cpu_probe_goes_through_the_one_decoder() -> None:
    from fatdispatch import _cpu as _slowpath

    d = fixture("qemu-a64fx")

    class Native:
        @staticmethod
        def hwcaps() -> tuple[int, int]:
            return d["hwcap"], d["hwcap2"]

    cpu = _slowpath.probe_other_cpu("aarch64", Native())
    assert cpu.features == _aarch64.decode_hwcaps(d["hwcap"], d["hwcap2"]) and cpu.source == "hwcap"
    assert _slowpath.aarch64_from_hwcaps(d["hwcap"], d["hwcap2"]).features == cpu.features
    assert _slowpath.from_cpuinfo(d["cpuinfo"], "aarch64").features == cpu.features


def test_decoder_covers_the_catalog_and_the_kernel_bits() -> None:
    from fatdispatch.build._catalog import cpu_catalog

    known = _aarch64.known_features()
    for v in cpu_catalog("aarch64").values():
        assert set(v.features) <= known, v.name
    max_cpu = fixture("qemu-max")
    # every bit qemu's max model sets that the table names decodes, and the table's bits are distinct
    from fatdispatch._tables import feature_table

    tab = feature_table()["aarch64"]
    assert len(set(tab["hwcap"].values())) == len(tab["hwcap"]) and len(set(tab["hwcap2"].values())) == len(tab["hwcap2"])
    listed = _aarch64.cpuinfo_cores(max_cpu["cpuinfo"])[0]
    assert listed & known == _aarch64.decode_hwcaps(max_cpu["hwcap"], max_cpu["hwcap2"])


def catalog_manifest() -> Any:
    from fatdispatch.build._catalog import cpu_catalog

    variants = [{"name": v.name, "kind": "cpu", "file": f"{v.name}/_core", "arch": "aarch64",
                 "requires": {"features": list(v.features)}, "properties": list(v.properties)}
                for v in cpu_catalog("aarch64").values()]
    return parse_manifest({"schema": 1, "module": "fatdemo._core", "variants": variants}, "<aarch64 catalog>")


# the picks the issue asks for: a64fx (SVE, no dotprod) gets the SVE build, which needs no dotprod
PICKS = [("cortex-a72", "baseline", "neon-cnt"), ("neoverse-n1", "armv8.2-dotprod", "neon-cnt-udot"),
         ("neoverse-v1", "armv8.2-sve", "sve-cnt"), ("neoverse-n2", "armv8.2-sve", "sve-cnt"),
         ("a64fx", "armv8.2-sve", "sve-cnt")]


@pytest.mark.parametrize("model,build,kernel", PICKS)
def test_pick_on_recorded_models(model: str, build: str, kernel: str) -> None:
    d = fixture(f"qemu-{model}")
    cpu = _aarch64.probe_cpu_record(lambda: (d["hwcap"], d["hwcap2"]))
    sel = select(catalog_manifest(), Hardware(cpu=cpu, gpu=no_gpus("none")), {})
    assert sel.order[0] == build, [c.reason for c in sel.candidates]
    if model == "a64fx":
        assert "asimddp" not in cpu.features
        assert "needs asimddp" in next(c.reason for c in sel.candidates if c.variant.name == "armv8.2-dotprod")


def test_qemu_model_table_is_the_recorded_one() -> None:
    from fatdispatch._toolbox import qemu_aarch64_models

    for model, h1, h2 in qemu_aarch64_models():
        d = fixture("qemu-" + model.replace(",sve=off", "-sve-off"))
        assert (h1, h2) == (d["hwcap"], d["hwcap2"]), model


def test_test_variants_plan() -> None:
    from fatdispatch._toolbox import aarch64_qemu_plan

    plan = aarch64_qemu_plan(catalog_manifest(), {})
    assert [(b, m) for b, m, _ in plan] == [("baseline", "cortex-a53"), ("armv8.2-dotprod", "neoverse-n1"),
                                            ("armv8.2-sve", "a64fx")]
    # a build no model can run is reported, not run
    odd = parse_manifest({"schema": 1, "module": "x._core", "variants": [
        {"name": "dgh", "kind": "cpu", "file": "dgh/_core", "arch": "aarch64", "requires": {"features": ["dgh"]}},
        {"name": "baseline", "kind": "cpu", "file": "baseline/_core", "arch": "aarch64",
         "requires": {"features": ["fp", "asimd"]}}]}, "<odd>")
    (name, model, why), _ = aarch64_qemu_plan(odd, {})
    assert (name, model) == ("dgh", None) and "needs dgh" in why  # no recorded model has DGH


# ---------------------------------------------------------------- the build side (no emulator needed)


def test_one_declaration_serves_both_arches() -> None:
    from fatdispatch.build._catalog import BuildError, variants_for

    names = ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4", "armv8.2-dotprod", "armv8.2-sve"]
    assert [v.name for v in variants_for(names, "aarch64")] == ["baseline", "armv8.2-dotprod", "armv8.2-sve"]
    assert [v.name for v in variants_for(names, "x86_64")] == ["baseline", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    assert variants_for(["baseline"], "aarch64")[0].flags["gcc"] == ("-march=armv8-a",)  # by target, not host
    with pytest.raises(BuildError, match="unknown variant.*'armv8.2-sev'"):
        variants_for(["baseline", "armv8.2-sev"], "aarch64")


def test_cross_env_and_suffix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fatdispatch.build import cross_env
    from fatdispatch.build._catalog import BuildError
    from fatdispatch.build._layout import default_arch as build_arch
    from fatdispatch.build._setuptools import ext_suffix

    with pytest.raises(BuildError, match="Python.h is missing"):
        cross_env("aarch64", str(tmp_path))
    inc = tmp_path / "usr" / "include" / "python3.11"
    inc.mkdir(parents=True)
    (inc / "Python.h").write_text("")
    env = cross_env("aarch64", str(tmp_path), (3, 11))
    assert env["CC"] == "aarch64-linux-gnu-gcc" and env["LDSHARED"] == "aarch64-linux-gnu-gcc -shared"
    assert env["SETUPTOOLS_EXT_SUFFIX"] == ".cpython-311-aarch64-linux-gnu.so"
    assert f"-I{inc}" in env["CFLAGS"].split()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert build_arch() == "aarch64" and ext_suffix("aarch64") == ".cpython-311-aarch64-linux-gnu.so"
    monkeypatch.delenv("SETUPTOOLS_EXT_SUFFIX")
    import platform

    other = "x86_64" if platform.machine() == "aarch64" else "aarch64"
    with pytest.raises(BuildError, match="set SETUPTOOLS_EXT_SUFFIX"):
        ext_suffix(other)


# ---------------------------------------------------------------- emulated CPUs (qemu 10)


def _env_missing() -> str | None:
    if not (QEMU.is_file() and PY.is_file() and (ARM64 / "ready").is_file()):
        return f"no emulated aarch64 environment in {ARM64} (run build_tools/arm64_env.sh: needs root, apt, network)"
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        return "aarch64-linux-gnu-gcc missing (apt-get install gcc-aarch64-linux-gnu)"
    return None


emulated = pytest.mark.skipif(_env_missing() is not None, reason=str(_env_missing()))

CHECK = r"""
import json, random, sys
import fatdispatch, fatdemo
rng = random.Random(2026)
cases = [(rng.randbytes(n), rng.randbytes(n)) for n in list(range(0, 130)) + [255, 256, 257, 1000, 4095, 4096, 65537]]
ones = b"\xff" * (1023 * 64 * 3 + 17)  # past the NEON kernels' widening blocks
cpu = fatdispatch.hardware(gpu=False).cpu
print(json.dumps({"variant": fatdemo.variant(), "kernel": fatdemo.build_info()["kernel"],
                  "features": sorted(cpu.features), "source": cpu.source, "notes": list(cpu.notes),
                  "hamming": [fatdemo.hamming(a, b) for a, b in cases],
                  "popcount": [fatdemo.popcount(a) for a, _ in cases] + [fatdemo.popcount(ones)]}))
"""


def _no_core_dump() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # qemu dumps core on a guest SIGILL otherwise


def emulate(model: str, site: Path, args: list[str], env: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FATDISPATCH_", "PYTHON"))}
    base.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", XDG_CACHE_HOME=str(site.parent / "cache"))
    return subprocess.run([str(QEMU), "-cpu", model, "-L", str(ROOTFS), str(PY), *args], env=dict(base, **(env or {})),
                          capture_output=True, text=True, timeout=timeout, cwd=str(site.parent),
                          preexec_fn=_no_core_dump)


@pytest.fixture(scope="session")
def arm64_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fatdispatch and fatdemo cross-built from this checkout into linux_aarch64 wheels, installed for the
    emulated interpreter (pip's --target/--platform, as for any foreign-platform install)."""
    from fatdispatch.build import cross_env

    work = tmp_path_factory.mktemp("arm64")
    src = work / "src"
    anywhere = shutil.ignore_patterns("*.egg-info", "*.variants", "*.so", "__pycache__", "build", "dist")
    top = {".git", ".venv", ".arm64", ".pytest_cache", ".mypy_cache", ".hypothesis", "benchmarks", "tests"}

    def skip(folder: str, names: list[str]) -> set[str]:
        out = set(anywhere(folder, names)) - ({"build"} if folder.endswith(os.path.join("src", "fatdispatch")) else set())
        return out | (top & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, src, ignore=skip)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FATDISPATCH_")}
    env.update(cross_env("aarch64", str(ROOTFS), (3, 11)), FATDISPATCH_SKIP_CUDA="1", PIP_NO_INDEX="1")
    whl = work / "wheels"
    for project in (src, src / "examples" / "fatdemo"):
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(whl), str(project)], env=env, capture_output=True, text=True, cwd=str(project))
        assert p.returncode == 0, p.stdout + p.stderr
    built = sorted(w.name for w in whl.glob("*.whl"))
    assert len(built) == 2 and all(w.endswith("-cp311-cp311-linux_aarch64.whl") for w in built), built
    site = work / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                        "--platform", "linux_aarch64", "--python-version", "3.11", "--implementation", "cp",
                        "--abi", "cp311", "--only-binary=:all:", *map(str, whl.glob("*.whl"))],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return site


def _host_results() -> dict[str, Any]:
    """The same inputs through the pure-Python reference in this (host) interpreter."""
    import random

    rng = random.Random(2026)
    cases = [(rng.randbytes(n), rng.randbytes(n)) for n in list(range(0, 130)) + [255, 256, 257, 1000, 4095, 4096, 65537]]
    ham = [int.from_bytes(bytes(x ^ y for x, y in zip(a, b)), "little").bit_count() for a, b in cases]
    pop = [int.from_bytes(a, "little").bit_count() for a, _ in cases] + [8 * (1023 * 64 * 3 + 17)]
    return {"hamming": ham, "popcount": pop}


@pytest.fixture(scope="session")
def host_results(demo_venv: Path) -> dict[str, Any]:
    """The example on this host (its own best build), checked against the reference: what every model must give."""
    ref = _host_results()
    p = subprocess.run([str(demo_venv), "-c", CHECK], capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if not k.startswith("FATDISPATCH_")})
    assert p.returncode == 0, p.stderr
    host = json.loads(p.stdout)
    assert (host["hamming"], host["popcount"]) == (ref["hamming"], ref["popcount"]), host["variant"]
    return host


@emulated
@pytest.mark.slow
@pytest.mark.parametrize("model,build,kernel", PICKS)
def test_emulated_pick_and_results(arm64_site: Path, host_results: dict[str, Any], model: str, build: str,
                                   kernel: str) -> None:
    p = emulate(model, arm64_site, ["-c", CHECK])
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert (out["variant"], out["kernel"]) == (build, kernel)
    assert (out["hamming"], out["popcount"]) == (host_results["hamming"], host_results["popcount"])
    # the live probe (the compiled helper's hwcaps() -> _aarch64) sees what was recorded for this model
    d = fixture(f"qemu-{model}")
    assert out["source"] == "hwcap" and set(out["features"]) == _aarch64.decode_hwcaps(d["hwcap"], d["hwcap2"])


@emulated
@pytest.mark.slow
def test_emulated_forced_sve_on_cortex_a72(arm64_site: Path) -> None:
    """Forcing the SVE build where there is no SVE: a clean ImportError; with FATDISPATCH_UNSAFE_FORCE, SIGILL."""
    code = "import fatdemo; print(fatdemo.variant(), fatdemo.hamming(bytes(4096), b'x' * 4096))"
    p = emulate("cortex-a72", arm64_site, ["-c", code], {"FATDISPATCH_FORCE": "armv8.2-sve"})
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    last = p.stderr.strip().splitlines()[-1]
    assert "NoUsableBuildError" in last and "cannot run it" in last and "sve" in last
    p = emulate("cortex-a72", arm64_site, ["-c", code], {"FATDISPATCH_FORCE": "armv8.2-sve",
                                                          "FATDISPATCH_UNSAFE_FORCE": "1"})
    assert p.returncode == -signal.SIGILL, (p.returncode, p.stdout, p.stderr[-2000:])
    assert p.stdout == ""  # it died in the kernel, before printing


@emulated
@pytest.mark.slow
def test_emulated_test_variants_command(arm64_site: Path) -> None:
    """``test-variants --qemu-aarch64``: each aarch64 build forced under the model that picks it, one table."""
    code = "import fatdemo, sys; sys.exit(fatdemo.hamming(b'\\x0f' * 100, bytes(100)) != 400)"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FATDISPATCH_", "PYTHON"))}
    env.update(PYTHONPATH=str(arm64_site), XDG_CACHE_HOME=str(arm64_site.parent / "cache"))
    p = subprocess.run([sys.executable, "-I", "-m", "fatdispatch", "test-variants", "--qemu-aarch64", str(QEMU),
                        "--sysroot", str(ROOTFS), "--path", str(arm64_site), "--", str(PY), "-c", code],
                       env=env, capture_output=True, text=True, timeout=300, preexec_fn=_no_core_dump)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for build, model in (("baseline", "cortex-a53"), ("armv8.2-dotprod", "neoverse-n1"), ("armv8.2-sve", "a64fx")):
        assert any(f"fatdemo._core:{build}" in line and f"qemu -cpu {model}" in line and "passed" in line
                   for line in p.stdout.splitlines()), p.stdout
    assert "3 passed, 0 failed" in p.stdout.splitlines()[-1]


@emulated
@pytest.mark.slow
def test_emulated_cpu_tests(arm64_site: Path, tmp_path: Path) -> None:
    """tests/test_cpu.py under the emulated aarch64 interpreter: what needs an x86 CPU skips, the rest passes."""
    from importlib.metadata import distribution

    libs = tmp_path / "pylibs"  # pytest and its pure-Python dependencies: this interpreter's installed files
    for name in ("pytest", "pluggy", "iniconfig", "packaging", "pygments"):
        dist = distribution(name)
        for f in dist.files or ():
            src = Path(str(dist.locate_file(f)))
            if "__pycache__" not in f.parts and src.is_file() and ".." not in f.parts:
                (libs / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, libs / f)
    p = emulate("neoverse-v1", arm64_site, ["-m", "pytest", "-v", "-p", "no:cacheprovider", "--rootdir", str(ROOT),
                                            str(ROOT / "tests" / "test_cpu.py")],
                {"PYTHONPATH": f"{arm64_site}:{libs}"}, timeout=600)
    tail = p.stdout[-3000:] + p.stderr[-2000:]
    assert p.returncode == 0, tail
    assert "test_live_probe_agrees_with_proc_cpuinfo_aarch64 PASSED" in p.stdout, tail
    assert "test_cpuinfo_parser PASSED" in p.stdout and "test_aarch64_hwcaps PASSED" in p.stdout, tail
    assert " failed" not in p.stdout.splitlines()[-1], tail


BINFMT = (r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:"
          r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:{qemu}:FP\n")


def in_aarch64_namespace(script: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``script`` (sh) in a private user+mount namespace whose own binfmt_misc runs aarch64 ELF files with
    qemu 10: there an emulated interpreter can start others, as on a real aarch64 machine."""
    setup = (f"mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && "
             f"printf '{BINFMT.format(qemu=QEMU)}' > /proc/sys/fs/binfmt_misc/register && ")
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", setup + script],
                          env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=_no_core_dump)


@emulated
@pytest.mark.slow
def test_emulated_aarch64_host_test_variants_qemu(arm64_site: Path, tmp_path: Path) -> None:
    """On an aarch64 machine ``test-variants --qemu`` runs every build natively, then each under the qemu model
    that picks it.  The machine is the emulated interpreter (QEMU_CPU=max) with binfmt_misc of its own."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) missing")
    qbin = tmp_path / "bin"
    qbin.mkdir()
    (qbin / "qemu-aarch64").symlink_to(QEMU)  # the qemu-aarch64 on PATH is qemu 10
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FATDISPATCH_", "PYTHON", "QEMU_"))}
    env.update(PATH=f"{qbin}:{env.get('PATH', '/usr/bin:/bin')}", QEMU_LD_PREFIX=str(ROOTFS), QEMU_CPU="max",
               PYTHONPATH=str(arm64_site), PYTHONDONTWRITEBYTECODE="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    probe = in_aarch64_namespace(f"{PY} -c 'import subprocess, sys; subprocess.run([sys.executable, \"-c\", \"\"], "
                                 "check=True)'", env, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"no private binfmt_misc here (unshare --user --mount): {probe.stderr.strip()[-200:]}")
    code = "import fatdemo, sys; sys.exit(fatdemo.hamming(b'\\\\x0f' * 100, bytes(100)) != 400)"
    p = in_aarch64_namespace(f"{PY} -m fatdispatch test-variants --qemu -- {PY} -c \"{code}\"", env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    lines = p.stdout.splitlines()
    for build in ("baseline", "armv8.2-dotprod", "armv8.2-sve"):
        # native runs force every fat module together to one build (test-variants' plan), named by the build
        assert any(ln.split()[:2] == [build, "native"] and "passed" in ln for ln in lines), p.stdout
    for build, model in (("baseline", "cortex-a53"), ("armv8.2-dotprod", "neoverse-n1"), ("armv8.2-sve", "a64fx")):
        assert any(f"fatdemo._core:{build}" in ln and f"qemu -cpu {model}" in ln and "passed" in ln
                   for ln in lines), p.stdout
    assert "3 passed, 0 failed (aarch64 builds under qemu)" in lines[-1]
