"""The variant catalog: schema-valid, and every variant's flags produce no more than its declared features."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fatdispatch._tables import feature_table
from fatdispatch.build._catalog import check_cuda_build, cpu_catalog, load, parse_cuda_spec, BuildError

VARIANTS = Path(__file__).resolve().parent.parent / "variants"


@pytest.mark.parametrize("name", ["x86_64.json", "aarch64.json"])
def test_schema(name: str) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((VARIANTS / "schema.json").read_text())
    jsonschema.validate(json.loads((VARIANTS / name).read_text()), schema)


def test_catalog_uses_the_runtime_vocabulary() -> None:
    table = feature_table()
    x86 = set(table["x86"]["bits"])
    arm = set(table["aarch64"]["hwcap"]) | set(table["aarch64"]["hwcap2"])
    for v in cpu_catalog("x86_64").values():
        assert set(v.features) <= x86, v.name
        # a level's variant declares at least that level's psABI features
        for lvl in range(1, (v.x86_64_level or 0) + 1):
            assert set(table["x86"]["levels"][str(lvl)]) <= set(v.features), (v.name, lvl)
    for v in cpu_catalog("aarch64").values():
        assert set(v.features) <= arm, v.name
    macros = load("x86_64.json")["macros"]
    assert set(macros["map"].values()) <= x86 and set(macros["no_macro"]) <= x86


def predefined(compiler: str, flags: list[str]) -> set[str]:
    out = subprocess.run([compiler, *flags, "-dM", "-E", "-x", "c", os.devnull], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}


def _check_arch(arch: str, compiler: str, base_flags: list[str]) -> None:
    data = load(f"{arch}.json")
    mapping, no_macro = data["macros"]["map"], set(data["macros"]["no_macro"])
    reference = predefined(compiler, base_flags)
    for name, v in cpu_catalog(arch).items():
        macros = predefined(compiler, list(v.flags["gcc"]))
        isa = {m for m in macros - reference if m.startswith("__") and m not in ("__OPTIMIZE__",)}
        isa |= {m for m in macros & set(mapping)}
        unknown = {m for m in isa if m not in mapping and not m.startswith(("__tune_", "__k8", "__code_model"))}
        unknown = {m for m in unknown if not m.startswith(("__GCC_ATOMIC", "__FLT", "__DBL", "__LDBL"))}
        assert not unknown, f"{name}: flags define ISA macros the catalog does not map: {sorted(unknown)}"
        enabled = {mapping[m] for m in isa if m in mapping}
        declared = set(v.features)
        assert enabled <= declared, f"{name}: flags enable {sorted(enabled - declared)} beyond its label"
        assert declared - no_macro <= enabled, f"{name}: declares {sorted(declared - no_macro - enabled)} its flags lack"


def test_x86_flags_match_labels() -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    _check_arch("x86_64", "gcc", ["-march=x86-64", "-mtune=generic", "-mno-sse3"])


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 cross compiler")
def test_aarch64_flags_match_labels() -> None:
    _check_arch("aarch64", "aarch64-linux-gnu-gcc", ["-march=armv8-a"])


def test_label_mismatch_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above must fail for a 'noavx' build compiled with F16C/BMI2 (LLamaSharp#1407)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc missing")
    data = load("x86_64.json")
    macros = predefined("gcc", ["-march=x86-64-v2", "-mf16c", "-mbmi2"])
    enabled = {data["macros"]["map"][m] for m in macros if m in data["macros"]["map"]}
    declared = set(data["variants"]["x86-64-v2"]["features"])
    assert {"f16c", "bmi2"} <= enabled - declared  # (gcc's -mf16c even turns on AVX)


def test_cuda_specs() -> None:
    assert parse_cuda_spec("sm_90").name == "cuda-sm90"
    b = parse_cuda_spec("ampere=sm_80+sm_86+compute_80")
    assert (b.name, b.sass, b.ptx) == ("ampere", ("80", "86"), ("80",))
    with pytest.raises(BuildError):
        parse_cuda_spec("sm90")
    check_cuda_build(parse_cuda_spec("sm_90a+sm_100f"), (13, 0))
    for bad in ("sm_70", "sm_101", "sm_89a"):
        with pytest.raises(BuildError, match="not valid for nvcc 13.0"):
            check_cuda_build(parse_cuda_spec(bad), (13, 0))


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc missing")
def test_cuda_catalog_matches_this_nvcc() -> None:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    from fatdispatch.build._catalog import nvcc_version
    version = nvcc_version(nvcc)
    key = f"{version[0]}.{version[1]}"
    if key not in load("cuda.json")["toolkits"]:
        pytest.skip(f"catalog has no entry for CUDA {key}")
    listed = subprocess.run([nvcc, "--list-gpu-code"], capture_output=True, text=True, check=True).stdout.split()
    real = {c[3:] for c in listed if c.startswith("sm_")}
    tk = load("cuda.json")["toolkits"][key]
    assert set(tk["sm"]) == real, sorted(set(tk["sm"]) ^ real)
    assert set(tk["suffixes"]["a"]) | set(tk["suffixes"]["f"]) <= real
