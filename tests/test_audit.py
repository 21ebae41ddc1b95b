"""The machine-code audit (``python -m fatdispatch audit``), ISA flags from the environment, load-time code, static
libraries, stale builds, and the same floating-point results from every build.

Fixtures are compiled here by hand with gcc (fast, and free to use flags fatdispatch's build_ext would strip);
the slow tests build the example itself as packagers do."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import EXAMPLE, FIXTURES, ROOT, qemu, run

iced = pytest.importorskip("iced_x86", reason="iced-x86 missing (pip install iced-x86)")
pytest.importorskip("elftools", reason="pyelftools missing (pip install pyelftools)")

from fatdispatch.build import _audit  # noqa: E402
from fatdispatch.build._catalog import cpu_catalog  # noqa: E402
from fatdispatch.build._flags import split_isa_flags  # noqa: E402
from fatdispatch.build._setuptools import wiring_line  # noqa: E402

AUDIT = FIXTURES / "audit"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc missing")
needs_qemu = pytest.mark.skipif(qemu() is None, reason="qemu-x86_64 missing (apt-get install qemu-user)")


# ---------------------------------------------------------------- helpers


def compile_so(out: Path, sources: list[Path], flags: list[str], extra: tuple[str, ...] = ()) -> Path:
    """A shared object from C sources, compiled exactly with ``flags`` (nothing stripped)."""
    inc = sysconfig.get_paths()["include"]
    run([GCC or "gcc", "-shared", "-fPIC", "-O2", f"-I{inc}", *flags, *map(str, sources), *extra, "-o", str(out)])
    return out


def fat_package(root: Path, builds: dict[str, Path], pkg: str = "auditpkg", arch: str = "x86_64") -> Path:
    """``root/pkg`` as build_ext would lay it out: the wiring line, ``_core.variants/<build>/_core<SUFFIX>`` and
    a manifest whose entries come from fatdispatch's catalog.  Returns the variants folder."""
    cat = cpu_catalog(arch)
    folder = root / pkg / "_core.variants"
    folder.mkdir(parents=True)
    (root / pkg / "__init__.py").write_text(wiring_line(["_core"]))
    entries = []
    for name, so in builds.items():
        (folder / name).mkdir()
        shutil.copy(so, folder / name / f"_core{SUFFIX}")
        v = cat[name]
        req: dict = {"features": sorted(v.features)}
        if v.x86_64_level:
            req["x86_64_level"] = v.x86_64_level
        entries.append({"name": name, "kind": "cpu", "file": f"{name}/_core", "arch": arch, "priority": 0,
                        "requires": req, "properties": list(v.properties)})
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "module": f"{pkg}._core", "variants": entries}))
    return folder


def bad_features(m: _audit.ModuleAudit, build: str) -> set[str]:
    b = next(b for b in m.builds if b.build == build)
    return {x for f in b.bad for x in f.missing}


# ---------------------------------------------------------------- pure: decoding and judging


def test_every_catalog_feature_has_an_iced_name() -> None:
    """Each feature a build may require is one iced-x86 can report (else the audit could never clear it)."""
    mapped = {_audit.x86_feature_name(n) for n in dir(iced.CpuidFeature) if n.isupper()} | {"lahf_lm"}
    no_instruction = {"osxsave"}  # an OS-state bit, not an instruction's requirement
    for v in cpu_catalog("x86_64").values():
        assert set(v.features) - no_instruction <= mapped, (v.name, set(v.features) - mapped)


def test_decoder_reports_features_and_branches() -> None:
    code = bytes.fromhex("c5fdfec0" "f3480fb8c0" "9f" "f30f1efa" "e800000000" "c3")  # vpaddd ymm; popcnt; lahf;
    insns, count = _audit.decode_x86(code, 0x1000)                                 # endbr64; call; ret
    assert count == 6
    feats = {i.address: i.features for i in insns}
    assert feats[0x1000] == ("avx2",) and feats[0x1004] == ("popcnt",) and feats[0x1009] == ("lahf_lm",)
    assert 0x100a not in feats  # endbr64 is a hint NOP on every x86-64 CPU
    call = next(i for i in insns if i.is_call)
    assert call.target == 0x1013 and call.features == ()


def image(code: bytes, syms: list[tuple[int, int, str]], roots: list[tuple[int, str]]) -> _audit.Image:
    return _audit.Image("x86_64", (_audit.Section(".text", 0x1000, code),), tuple(syms), tuple(roots))


def test_load_time_code_is_found_through_calls_and_guards_are_per_symbol() -> None:
    # 0x1000 kernel: vpaddd ymm0,ymm0,ymm0; ret      0x1010 ctor: call kernel; ret      0x1020 other: vfmadd; ret
    code = bytearray(b"\x90" * 0x30)
    code[0x00:0x05] = bytes.fromhex("c5fdfec0c3")
    rel = (0x1000 - (0x1010 + 5)) & 0xFFFFFFFF
    code[0x10:0x16] = b"\xe8" + struct.pack("<I", rel) + b"\xc3"
    code[0x20:0x26] = bytes.fromhex("c4e2f9b8c1c3")  # vfmadd231pd xmm0,xmm0,xmm1
    img = image(bytes(code), [(0x1000, 5, "kernel"), (0x1010, 6, "ctor"), (0x1020, 6, "other")],
                [(0x1010, ".init_array")])
    v1 = _audit.required_features(cpu_catalog("x86_64")["baseline"].features, 1)
    found, _ = _audit.audit_image(img, v1)
    assert [(f.symbol, f.missing) for f in found] == [("kernel", ("avx2",)), ("other", ("fma",))]
    assert found[0].load_time == ".init_array -> ctor -> kernel" and found[1].load_time == ""
    guarded, _ = _audit.audit_image(img, v1, {"kern*": ["avx2"], "other": ["avx2"]})
    assert [f.guarded for f in guarded] == [True, False]  # "other" needs fma, which its declaration lacks
    v3 = _audit.required_features(cpu_catalog("x86_64")["x86-64-v3"].features, 3)
    assert _audit.audit_image(img, v3)[0] == []


def test_aarch64_classifier() -> None:
    assert _audit.aarch64_features("sdot", "v0.4s, v1.16b, v2.16b") == ("asimddp",)
    assert _audit.aarch64_features("ld1d", "{z0.d}, p0/z, [x0]") == ("sve",)
    assert _audit.aarch64_features("ldaddal", "w1, w0, [x2]") == ("atomics",)
    assert _audit.aarch64_features("fadd", "v0.8h, v1.8h, v2.8h") == ("asimdhp",)
    assert _audit.aarch64_features("add", "x0, x1, x2") == () and _audit.aarch64_features("fadd", "d0, d1, d2") == ()


def test_stale_entries() -> None:
    from conftest import demo_manifest

    man = demo_manifest()
    files = ["manifest.json", f"baseline/_core{SUFFIX}", "cuda-old/_core.so", "x86-64-v3/notes.txt"]
    assert _audit.stale_entries(files, man) == ["cuda-old/_core.so", "x86-64-v3/notes.txt"]


def test_isa_flags_are_told_apart() -> None:
    kept, gone = split_isa_flags(["-O2", "-mavx2", "-mpopcnt", "-march=native", "-mtune=skylake", "-m64",
                                  "-mno-red-zone", "-mno-avx512f", "-mprefer-vector-width=256", "-g", "-mcpu=neoverse-v1",
                                  "-mfpmath=sse", "-mavx512vl"])
    assert gone == ["-mavx2", "-mpopcnt", "-march=native", "-mtune=skylake", "-mno-avx512f", "-mcpu=neoverse-v1",
                    "-mavx512vl"]
    assert kept == ["-O2", "-m64", "-mno-red-zone", "-mprefer-vector-width=256", "-g", "-mfpmath=sse"]


def test_guarded_declarations_are_checked() -> None:
    assert _audit.read_declarations({"schema": 1, "guarded": {"k": ["avx2"]}}, "x") == {"k": ["avx2"]}
    for bad in ({"schema": 1, "guarded": {"k": []}}, {"schema": 1, "guarded": {"k": "avx2"}}, {"schema": 2},
                {"schema": 1, "guard": {}}):
        with pytest.raises(_audit.AuditError):
            _audit.read_declarations(bad, "x")


# ---------------------------------------------------------------- compiled fixtures


@needs_gcc
def test_flags_not_stripped_put_avx2_into_baseline_and_v2(tmp_path: Path) -> None:
    """What CFLAGS="-O2 -mavx2 -mpopcnt" did to every build before build_ext stripped it: the audit finds it."""
    src = EXAMPLE / "src" / "fatdemo" / "_core.c"
    base = compile_so(tmp_path / "b.so", [src], ["-march=x86-64", "-mavx2", "-mpopcnt"])
    v2 = compile_so(tmp_path / "v2.so", [src], ["-march=x86-64-v2", "-mavx2"])
    clean = compile_so(tmp_path / "c.so", [src], ["-march=x86-64"])
    m = _audit.audit_folder(str(fat_package(tmp_path / "site", {"baseline": base, "x86-64-v2": v2})))
    assert {"avx", "avx2", "popcnt"} <= bad_features(m, "baseline")
    assert "avx2" in bad_features(m, "x86-64-v2") and "popcnt" not in bad_features(m, "x86-64-v2")
    hit = next(f for b in m.builds for f in b.bad if "avx2" in f.missing)
    assert hit.section == ".text" and hit.function in ("run", "count_bits") and hit.text.startswith("v")  # inlined
    text = _audit.format_report([m])
    assert f"{hit.address:#010x}" in text and hit.function in text and "FAILED" in text
    ok = _audit.audit_folder(str(fat_package(tmp_path / "site2", {"baseline": clean})))
    assert ok.ok and "clean" in _audit.format_report([ok])


@needs_gcc
def test_avx2_constructor_is_reported_as_load_time(tmp_path: Path) -> None:
    so = compile_so(tmp_path / "ctor.so", [AUDIT / "ctor.c"], ["-march=x86-64", "-DWITH_CTOR"])
    m = _audit.audit_folder(str(fat_package(tmp_path / "site", {"baseline": so})))
    bad = m.builds[0].bad
    assert bad and all(f.load_time.startswith(".init_array -> init_tables") for f in bad)
    assert "avx2" in {x for f in bad for x in f.missing}
    assert "LOAD-TIME" in _audit.format_report([m])
    p = subprocess.run([sys.executable, "-m", "fatdispatch", "audit", str(tmp_path / "site")], capture_output=True,
                       text=True)
    assert p.returncode == 1 and "init_tables" in p.stdout and "[load: .init_array" in p.stdout


@needs_gcc
@needs_qemu
@pytest.mark.qemu
def test_avx2_constructor_kills_the_import_under_qemu64(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """Why load-time code is reported apart: the build dies inside dlopen, before any dispatch; the same module
    without its constructor imports fine on the same emulated CPU."""
    dying = fat_package(tmp_path / "a", {"baseline": compile_so(tmp_path / "c1.so", [AUDIT / "ctor.c"],
                                                                ["-march=x86-64", "-DWITH_CTOR"])})
    living = fat_package(tmp_path / "b", {"baseline": compile_so(tmp_path / "c2.so", [AUDIT / "ctor.c"],
                                                                 ["-march=x86-64"])})
    code = "import auditpkg._core as m; print(m.answer())"
    for folder, expect_ok in ((living, True), (dying, False)):
        env = dict(clean_env, PYTHONPATH=f"{folder.parent.parent}{os.pathsep}{ROOT / 'src'}",
                   FATDISPATCH_FORCE="baseline", FATDISPATCH_UNSAFE_FORCE="1")
        p = subprocess.run([qemu() or "qemu-x86_64", "-cpu", "qemu64", sys.executable, "-c", code], env=env,
                           capture_output=True, text=True, timeout=300, cwd="/")
        if expect_ok:
            assert p.returncode == 0 and p.stdout.strip() == "42", p.stderr[-1000:]
        else:
            assert p.returncode in (-signal.SIGILL, 128 + signal.SIGILL), (p.returncode, p.stderr[-1000:])


@needs_gcc
def test_static_library_built_with_avx2_is_caught(tmp_path: Path) -> None:
    obj = tmp_path / "avx2lib.o"
    run([GCC or "gcc", "-c", "-O3", "-fPIC", "-march=x86-64", "-mavx2", str(AUDIT / "avx2lib.c"), "-o", str(obj)])
    lib = tmp_path / "libavx2lib.a"
    run(["ar", "rcs", str(lib), str(obj)])
    so = compile_so(tmp_path / "u.so", [AUDIT / "uselib.c"], ["-march=x86-64"], (str(lib),))
    m = _audit.audit_folder(str(fat_package(tmp_path / "site", {"baseline": so})))
    bad = m.builds[0].bad
    assert bad and {f.function for f in bad} == {"avx2lib_sum"} and "avx" in {x for f in bad for x in f.missing}
    Path(m.folder, _audit.AUDIT_NAME).write_text(_audit.declarations_file({"avx2lib_*": ["avx", "avx2"]}))
    guarded = _audit.audit_folder(m.folder)
    assert guarded.ok and all(f.guarded for f in guarded.builds[0].findings)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="aarch64-linux-gnu-gcc missing")
def test_aarch64_build_with_dotprod_in_the_baseline(tmp_path: Path) -> None:
    pytest.importorskip("capstone", reason="capstone missing (pip install capstone)")
    so = tmp_path / "a64.so"
    run(["aarch64-linux-gnu-gcc", "-O2", "-shared", "-fPIC", "-march=armv8.2-a+dotprod", str(AUDIT / "dotprod_a64.c"),
         "-o", str(so)])
    base = fat_package(tmp_path / "a", {"baseline": so}, arch="aarch64")
    m = _audit.audit_folder(str(base))
    assert [(f.function, f.missing) for f in m.builds[0].bad] == [("dot_step", ("asimddp",))]
    assert _audit.audit_folder(str(fat_package(tmp_path / "b", {"armv8.2-dotprod": so}, arch="aarch64"))).ok


FP_PROBE = """
import array, random, struct, sys, importlib.machinery, importlib.util
spec = importlib.util.spec_from_file_location("_core", sys.argv[1],
                                              loader=importlib.machinery.ExtensionFileLoader("_core", sys.argv[1]))
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
rng = random.Random(15)
out = []
for n in (3, 100, 1001):
    a = array.array("d", (rng.uniform(-1, 1) for _ in range(n))); b = array.array("d", (rng.uniform(-1, 1) for _ in range(n)))
    out.append(struct.pack("<d", m.dot(a, b)).hex())
print(" ".join(out))
"""


@needs_gcc
def test_fma_contraction_changes_the_example_kernel_and_fp_contract_off_does_not(tmp_path: Path) -> None:
    """The example's dot kernel is sensitive: v3 flags with contraction allowed give other bits than the baseline
    (so the bit-for-bit test over every build can fail); with -ffp-contract=off, as build_ext adds, the same."""
    src = EXAMPLE / "src" / "fatdemo" / "_core.c"
    res = {}
    for name, flags in (("base", ["-march=x86-64"]), ("v3", ["-march=x86-64-v3"]),
                        ("v3off", ["-march=x86-64-v3", "-ffp-contract=off"])):
        so = compile_so(tmp_path / f"{name}{SUFFIX}", [src], flags)
        res[name] = run([sys.executable, "-c", FP_PROBE, str(so)]).stdout.split()
    assert res["v3off"] == res["base"]
    assert res["v3"] != res["base"]


# ---------------------------------------------------------------- the example, built as packagers build it


@pytest.mark.slow
def test_example_wheel_audits_clean_and_holds_no_stale_builds(wheels: dict[str, Path]) -> None:
    p = subprocess.run([sys.executable, "-m", "fatdispatch", "audit", str(wheels["fatdemo"])], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(" clean (") == len(json.loads(zipfile.ZipFile(wheels["fatdemo"]).read(
        "fatdemo/_core.variants/manifest.json"))["variants"])
    data = json.loads(run([sys.executable, "-m", "fatdispatch", "audit", "--json", str(wheels["fatdemo"])]).stdout)
    assert data["ok"] and not data["modules"][0]["stale"]


@pytest.mark.slow
def test_stale_build_in_a_wheel_is_reported(wheels: dict[str, Path], tmp_path: Path) -> None:
    stale = tmp_path / "fatdemo-0.1.0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheels["fatdemo"]) as src, zipfile.ZipFile(stale, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item))
        dst.writestr(f"fatdemo/_core.variants/cuda-sm70/_core{SUFFIX}", b"\x7fELF")
    p = subprocess.run([sys.executable, "-m", "fatdispatch", "audit", str(stale)], capture_output=True, text=True)
    assert p.returncode == 1 and f"STALE      cuda-sm70/_core{SUFFIX}" in p.stdout
    out = run([sys.executable, "-m", "fatdispatch", "inspect", str(stale)])
    assert "cuda-sm70" in out.stderr and "stale" in out.stderr


@pytest.mark.slow
@needs_qemu
def test_user_isa_flags_are_stripped_and_the_baseline_runs_on_qemu64(tmp_path: Path,
                                                                        clean_env: dict[str, str]) -> None:
    """CFLAGS="-O2 -mavx2 -mpopcnt" (common in distro and CI setups): said once in the log, gone from every
    build (the audit at the end of build_ext is clean), and the baseline build runs the example's tests on
    qemu64, a CPU without POPCNT or AVX."""
    work = tmp_path / "src"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    env = dict(clean_env, CFLAGS="-O2 -mavx2 -mpopcnt", CXXFLAGS="-mavx2", LDFLAGS="-mavx2",
               FATDISPATCH_SKIP_CUDA="1", PIP_NO_INDEX="1")
    p = run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w",
             str(tmp_path / "dist"), str(work)], env=env)
    log = p.stdout + p.stderr
    assert log.count("fatdispatch: ignoring the ISA flags -mavx2 -mpopcnt") == 1, log[-3000:]
    assert "-O2" in log and "audit: 4 builds, 0 instructions beyond their manifest" in log
    wheel = next((tmp_path / "dist").glob("fatdemo-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    env = dict(clean_env, PYTHONPATH=f"{site}{os.pathsep}{ROOT / 'src'}")
    q = subprocess.run([qemu() or "qemu-x86_64", "-cpu", "qemu64", sys.executable,
                        str(EXAMPLE / "tests" / "test_fatdemo.py")], env=env, capture_output=True, text=True,
                       timeout=600, cwd="/")
    assert q.returncode == 0 and "fatdemo baseline (swar)" in q.stdout, q.stdout[-2000:] + q.stderr[-2000:]


FP_EXAMPLE = """
import array, random, struct, fatdemo
rng = random.Random(15)
out = [fatdemo.variant()]
for n in (3, 100, 1001, 4096):
    a = array.array("d", (rng.uniform(-1, 1) for _ in range(n))); b = array.array("d", (rng.uniform(-1, 1) for _ in range(n)))
    out.append(struct.pack("<d", fatdemo.dot(a, b)).hex())
print(" ".join(out))
"""


@pytest.mark.slow
def test_every_build_of_the_example_gives_the_same_bits(demo_venv: Path, clean_env: dict[str, str],
                                                         wheels: dict[str, Path]) -> None:
    """Each build forced in a fresh interpreter; the dot products agree bit for bit (the CUDA builds' C part
    runs on the CPU here too, forced without a GPU)."""
    from fatdispatch._cpu import probe_cpu

    level = probe_cpu().x86_64_level or 1
    manifest = json.loads(zipfile.ZipFile(wheels["fatdemo"]).read("fatdemo/_core.variants/manifest.json"))
    results = {}
    for v in manifest["variants"]:
        if v["requires"].get("x86_64_level", 1) > level:
            continue
        env = dict(clean_env, FATDISPATCH_FORCE=v["name"])
        if v["kind"] == "cuda":
            env["FATDISPATCH_UNSAFE_FORCE"] = "1"
        name, *bits = run([str(demo_venv), "-c", FP_EXAMPLE], env=env, cwd="/").stdout.split()
        assert name == v["name"]
        results[name] = bits
    assert len(results) >= 2 and len({tuple(b) for b in results.values()}) == 1, results


def test_extension_settings_and_command_combination() -> None:
    from setuptools.command.build_ext import build_ext as st_build_ext

    from fatdispatch.build import BuildError, build_ext
    from fatdispatch.build._setuptools import audit_mode, extensions_from_pyproject, fat_command

    (ext,) = extensions_from_pyproject({"tool": {"fatdispatch": {"extension": [
        {"name": "p._m", "sources": ["m.c"], "variants": ["baseline"], "fp-contract": True, "audit": "warn",
         "audit-guarded": {"kernel_*": ["avx2"]}}]}}})
    assert ext.fp_contract is True and ext.audit == "warn" and ext.audit_guarded == {"kernel_*": ["avx2"]}
    assert audit_mode(ext, {}) == "warn" and audit_mode(ext, {"FATDISPATCH_AUDIT": "OFF"}) == "off"
    with pytest.raises(BuildError, match="FATDISPATCH_AUDIT"):
        audit_mode(ext, {"FATDISPATCH_AUDIT": "maybe"})
    for bad in ({"audit": "loud"}, {"fp-contract": "yes"}, {"audit-guarded": {"k": "avx2"}}):
        with pytest.raises(BuildError):
            extensions_from_pyproject({"tool": {"fatdispatch": {"extension": [
                dict({"name": "p._m", "sources": ["m.c"], "variants": ["baseline"]}, **bad)]}}})

    class Theirs(st_build_ext):
        pass

    combined = fat_command("build_ext", Theirs, build_ext)
    assert combined.__mro__[1:3] == (build_ext, Theirs) and combined.__name__ == "Theirs"
    assert fat_command("build_ext", None, build_ext) is build_ext
    assert fat_command("build_ext", build_ext, build_ext) is build_ext


BUILD_WITH_LIB = """
from setuptools import setup
from fatdispatch.build import FatExtension, cmdclass
import os
guarded = {"avx2lib_*": ["avx", "avx2"]} if os.environ.get("GUARD") else None
setup(name="libpkg", version="0.1", packages=["libpkg"], install_requires=["fatdispatch"],
      ext_modules=[FatExtension("libpkg._core", ["uselib.c"], variants=["baseline"], extra_objects=["libavx2lib.a"],
                                audit_guarded=guarded)],
      cmdclass=cmdclass())
"""


@pytest.mark.slow
@needs_gcc
def test_build_ext_fails_on_findings_unless_told_to_warn_or_guarded(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """The audit at the end of build_ext: a -mavx2 static library linked into the baseline fails the build;
    FATDISPATCH_AUDIT=warn lets it through with a warning; a guarded declaration passes and lands in audit.json."""
    run([GCC or "gcc", "-c", "-O3", "-fPIC", "-march=x86-64", "-mavx2", str(AUDIT / "avx2lib.c"), "-o",
         str(tmp_path / "avx2lib.o")])
    run(["ar", "rcs", str(tmp_path / "libavx2lib.a"), str(tmp_path / "avx2lib.o")])
    shutil.copy(AUDIT / "uselib.c", tmp_path)
    (tmp_path / "libpkg").mkdir()
    (tmp_path / "libpkg" / "__init__.py").write_text("")
    (tmp_path / "setup.py").write_text(BUILD_WITH_LIB)

    def build(keep: bool = False, **extra: str) -> subprocess.CompletedProcess[str]:
        if not keep:
            shutil.rmtree(tmp_path / "build", ignore_errors=True)
        return subprocess.run([sys.executable, "setup.py", "-q", "build"], cwd=tmp_path, capture_output=True,
                              text=True, env=dict(clean_env, **extra))

    failed = build()
    assert failed.returncode != 0 and "avx2lib_sum" in failed.stdout
    assert "the machine-code audit found instructions" in failed.stderr and "FATDISPATCH_AUDIT=warn" in failed.stderr
    warned = build(FATDISPATCH_AUDIT="warn")
    assert warned.returncode == 0 and "the machine-code audit found instructions" in warned.stderr
    guarded = build(GUARD="1")
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    side = next((tmp_path / "build").glob("lib*/libpkg/_core.variants/audit.json"))
    assert json.loads(side.read_text())["guarded"] == {"avx2lib_*": ["avx", "avx2"]}
    assert "guarded instructions as declared in audit.json" in guarded.stdout
    stale = side.parent / "cuda-sm70"  # what a FATDISPATCH_SKIP_CUDA=1 rebuild used to leave behind
    stale.mkdir()
    (stale / f"_core{SUFFIX}").write_bytes(b"old")
    again = build(keep=True, GUARD="1")
    assert again.returncode == 0 and not stale.exists() and "removed the previous build's" in again.stdout


def test_formats_not_decoded_are_said_not_failed(tmp_path: Path) -> None:
    folder = fat_package(tmp_path, {"baseline": Path(sys.executable)})  # an ELF file: replaced below
    target = folder / "baseline" / f"_core{SUFFIX}"
    target.write_bytes(b"\xcf\xfa\xed\xfe" + bytes(60))  # a Mach-O header
    m = _audit.audit_folder(str(folder))
    assert m.ok and "not audited: Mach-O file" in _audit.format_report([m])
    target.write_bytes(b"garbage" * 10)
    bad = _audit.audit_folder(str(folder))
    assert not bad.ok and "ERROR" in _audit.format_report([bad]) and "not an ELF file" in bad.builds[0].error
