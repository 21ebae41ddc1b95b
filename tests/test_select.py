"""The pure selection over recorded machines and GPU cases, and the FATDISPATCH_* overrides."""

from __future__ import annotations

import pytest

from conftest import demo_manifest, machine
from fatdispatch import ConfigError
from fatdispatch._cuda import sm_fit
from fatdispatch._select import format_selection, select

M = demo_manifest()


@pytest.mark.parametrize("cpu,expected", [
    ("qemu-qemu64", "baseline"),
    ("qemu-nehalem", "x86-64-v2"),
    ("qemu-haswell", "x86-64-v3"),
    ("host-sapphirerapids-vm", "x86-64-v4"),
])
def test_cpu_machines(cpu: str, expected: str) -> None:
    sel = select(M, machine(cpu), {})
    assert sel.chosen == expected and sel.error is None
    # every build has a reason; every unusable one says why
    for c in sel.candidates:
        assert c.reason
        if not c.usable:
            assert "needs" in c.reason or "no usable NVIDIA GPU" in c.reason
    # the load order falls back level by level
    levels = [sel.candidate(n).variant.x86_64_level for n in sel.order]
    assert levels == sorted(levels, reverse=True)


def test_reason_names_missing_features() -> None:
    sel = select(M, machine("qemu-nehalem"), {})
    assert "avx2" in sel.candidate("x86-64-v3").reason
    assert "x86-64-v2" in sel.candidate("x86-64-v4").reason


@pytest.mark.parametrize("gpu,expected,fit", [
    ("t4-driver580", "cuda-sm75", 3),
    ("a100-driver580", "cuda-sm80", 3),
    ("rtx3090-driver580", "cuda-sm86", 3),
    ("l4-driver580", "cuda-sm86", 2),  # 8.9 runs sm_86 SASS (same major, higher minor)
    ("h100-driver580", "cuda-sm90", 3),
    ("b200-driver580", "cuda-ptx75", 1),  # no Blackwell SASS: PTX JIT
    ("two-h100-driver580", "cuda-sm90", 3),
    ("mixed-t4-h100-driver580", "cuda-ptx75", 1),  # only PTX runs on both 7.5 and 9.0
])
def test_gpu_machines(gpu: str, expected: str, fit: int) -> None:
    sel = select(M, machine("host-sapphirerapids-vm", gpu), {})
    assert sel.chosen == expected
    assert sel.candidate(expected).score[1] == fit
    # CPU builds stay in the order as fallbacks after every usable CUDA build
    assert sel.order[-1] == "baseline"


def test_no_driver_picks_cpu_with_reason() -> None:
    sel = select(M, machine("host-sapphirerapids-vm"), {})
    assert sel.chosen == "x86-64-v4"
    assert "no NVIDIA driver" in sel.candidate("cuda-sm90").reason


def test_old_driver_rules_out_cuda13_builds() -> None:
    sel = select(M, machine("host-sapphirerapids-vm", "h100-driver535"), {})
    assert sel.chosen == "x86-64-v4"
    reason = sel.candidate("cuda-sm90").reason
    assert "CUDA 13.0" in reason and "12.2" in reason and "580" in reason


def test_missing_libcuda_rules_out_cuda() -> None:
    sel = select(M, machine("host-sapphirerapids-vm", "h100-driver580", libcuda=False), {})
    assert sel.chosen == "x86-64-v4" and "libcuda" in sel.candidate("cuda-sm90").reason


def test_sm75_gpu_rejects_newer_sass() -> None:
    sel = select(M, machine("host-sapphirerapids-vm", "t4-driver580"), {})
    assert "compute capability 7.5" in sel.candidate("cuda-sm90").reason


@pytest.mark.parametrize("cvd,order,expected", [
    ("", None, "x86-64-v4"),
    ("-1", None, "x86-64-v4"),
    ("0", "PCI_BUS_ID", "cuda-sm75"),
    ("1", "PCI_BUS_ID", "cuda-sm90"),
    ("1", None, "cuda-ptx75"),  # fastest-first order with mixed GPUs: must run on both
    ("GPU-5eb07142", None, "cuda-sm90"),
    ("GPU-1b7c3f2e", None, "cuda-sm75"),
    ("0,0", "PCI_BUS_ID", "x86-64-v4"),
])
def test_cuda_visible_devices_selection(cvd: str, order: str | None, expected: str) -> None:
    env = {"CUDA_VISIBLE_DEVICES": cvd}
    if order:
        env["CUDA_DEVICE_ORDER"] = order
    assert select(M, machine("host-sapphirerapids-vm", "mixed-t4-h100-driver580"), env).chosen == expected


def test_sm_fit_rules() -> None:
    assert sm_fit(("90a",), (), (9, 0)) == 3
    assert sm_fit(("90a",), (), (10, 0)) == 0  # arch-specific: exactly 9.0
    assert sm_fit(("100f",), (), (10, 3)) == 2  # family: same major, higher minor
    assert sm_fit(("100f",), (), (12, 0)) == 0
    assert sm_fit(("80",), (), (8, 6)) == 2
    assert sm_fit(("86",), (), (8, 0)) == 0
    assert sm_fit((), ("80",), (9, 0)) == 1
    assert sm_fit((), ("90",), (8, 9)) == 0


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize("value,expected", [
    ("cpu", "x86-64-v4"), ("CPU", "x86-64-v4"), ("baseline", "baseline"), ("x86-64-v2", "x86-64-v2"),
    ("avx2", "x86-64-v3"), ("AVX512", "x86-64-v4"), ("fatdemo._core:x86-64-v2", "x86-64-v2"),
    ("other.mod:baseline", "x86-64-v4"), ("other.mod:baseline,fatdemo._core:v3", "x86-64-v3"),
    ("v2,fatdemo._core:baseline", "baseline"),
])
def test_force(value: str, expected: str) -> None:
    sel = select(M, machine("host-sapphirerapids-vm"), {"FATDISPATCH_FORCE": value})
    assert sel.chosen == expected and sel.error is None


def test_force_cpu_never_considers_cuda() -> None:
    sel = select(M, machine("host-sapphirerapids-vm", "h100-driver580"), {"FATDISPATCH_FORCE": "cpu"})
    assert sel.chosen == "x86-64-v4" and all(sel.candidate(n).variant.kind == "cpu" for n in sel.order)
    assert "rules it out" in sel.candidate("cuda-sm90").reason


def test_force_cuda() -> None:
    sel = select(M, machine("host-sapphirerapids-vm", "h100-driver580"), {"FATDISPATCH_FORCE": "cuda"})
    assert sel.order[0] == "cuda-sm90" and all(n.startswith("cuda") for n in sel.order)
    sel = select(M, machine("host-sapphirerapids-vm"), {"FATDISPATCH_FORCE": "cuda"})
    assert sel.error and "no NVIDIA driver" in sel.error and sel.order == ()


def test_force_unrunnable_build_is_an_error_unless_unsafe() -> None:
    sel = select(M, machine("qemu-nehalem"), {"FATDISPATCH_FORCE": "x86-64-v3"})
    assert sel.order == () and sel.error and "cannot run" in sel.error and "FATDISPATCH_UNSAFE_FORCE" in sel.error
    sel = select(M, machine("qemu-nehalem"), {"FATDISPATCH_FORCE": "x86-64-v3", "FATDISPATCH_UNSAFE_FORCE": "1"})
    assert sel.order == ("x86-64-v3",) and "UNSAFE" in sel.candidate("x86-64-v3").reason


@pytest.mark.parametrize("value", ["bogus", "x86-64-v5", "cuda-sm99", "a/b.so", "../x", "fatdemo._core:"])
def test_unknown_force_value_is_a_clear_error(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        select(M, machine("host-sapphirerapids-vm"), {"FATDISPATCH_FORCE": value})
    msg = str(info.value)
    assert "FATDISPATCH_FORCE" in msg
    if "/" not in value and value.endswith(":") is False:
        assert "valid values" in msg and "x86-64-v3" in msg and "cpu" in msg


def test_conflicting_force_items() -> None:
    with pytest.raises(ConfigError, match="several builds"):
        select(M, machine(), {"FATDISPATCH_FORCE": "fatdemo._core:v2,fatdemo._core:v3"})


def test_disable() -> None:
    hw = machine("host-sapphirerapids-vm")
    assert select(M, hw, {"FATDISPATCH_DISABLE": "avx512f"}).chosen == "x86-64-v3"
    sel = select(M, hw, {"FATDISPATCH_DISABLE": "AVX2, popcnt"})
    assert sel.chosen == "baseline"
    assert "FATDISPATCH_DISABLE" in " ".join(sel.hardware.cpu.notes)
    with pytest.raises(ConfigError, match="did you mean 'avx2'"):
        select(M, hw, {"FATDISPATCH_DISABLE": "avx22"})


@pytest.mark.parametrize("name", ["FATDISPATCH_UNSAFE_FORCE", "FATDISPATCH_VERBOSE", "FATDISPATCH_GPU_CACHE"])
def test_boolean_values(name: str) -> None:
    from fatdispatch._env import boolean
    assert boolean({name: "Yes"}, name) is True and boolean({name: "0"}, name) is False
    with pytest.raises(ConfigError):
        boolean({name: "maybe"}, name)


def test_unknown_variable_suggestion() -> None:
    from fatdispatch._env import unknown_variables
    msgs = unknown_variables({"FATDISPATCH_FROCE": "cpu", "FATDISPATCH_FORCE": "cpu", "PATH": "/bin"})
    assert len(msgs) == 1 and "did you mean FATDISPATCH_FORCE" in msgs[0]


def test_packager_priority_overrides_level() -> None:
    import json
    raw = json.loads(json.dumps({"schema": 1, "module": "fatdemo._core", "variants": [
        {"name": v.name, "kind": v.kind, "file": v.file, "arch": v.arch,
         "priority": -1 if v.name == "x86-64-v4" else 0,
         "requires": {"features": sorted(v.features), "x86_64_level": v.x86_64_level}}
        for v in M.variants if v.kind == "cpu"]}))
    from fatdispatch._manifest import parse_manifest
    sel = select(parse_manifest(raw, "<t>"), machine("host-sapphirerapids-vm"), {})
    assert sel.chosen == "x86-64-v3" and sel.order[-1] == "x86-64-v4"


def test_format_selection_mentions_every_build() -> None:
    text = format_selection(select(M, machine("qemu-haswell"), {}))
    for v in M.variants:
        assert v.name in text


# ---------------------------------------------------------------- hostile environment

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

VARS = ["FATDISPATCH_FORCE", "FATDISPATCH_UNSAFE_FORCE", "FATDISPATCH_DISABLE", "FATDISPATCH_VERBOSE",
        "FATDISPATCH_GPU_CACHE", "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"]
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["cpu", "cuda", "baseline", "../../lib.so", "/tmp/x.so",
                                                        "fatdemo._core:", ":", ",", "avx2,avx512", "-1", "GPU-"]))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(VARS), TEXT, max_size=len(VARS)), st.sampled_from(
    ["qemu-qemu64", "qemu-haswell", "host-sapphirerapids-vm"]), st.sampled_from([None, "mixed-t4-h100-driver580"]))
def test_fuzzed_environment_never_crashes_or_loads_a_path(env: dict[str, str], cpu: str, gpu: str | None) -> None:
    try:
        sel = select(M, machine(cpu, gpu), env)
    except ConfigError as exc:
        assert "FATDISPATCH_" in str(exc)
        return
    names = {v.name for v in M.variants}
    assert set(sel.order) <= names  # only builds from the manifest, never a path from the environment
    if sel.error is None:
        assert sel.order
    if env.get("FATDISPATCH_UNSAFE_FORCE", "0").strip().lower() not in ("1", "true", "yes", "on"):
        assert all(sel.candidate(n).usable for n in sel.order)  # nothing unrunnable unless explicitly unsafe


@pytest.mark.parametrize("force,probes_gpu", [("cpu", False), ("baseline", False), ("x86-64-v3", False),
                                              ("avx2", False), ("v1", False), ("cuda", True), (None, True)])
def test_gpu_probe_skipped_when_force_rules_cuda_out(force: str | None, probes_gpu: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import fatdispatch._gpu as gpu
    import fatdispatch._load as load
    from fatdispatch._records import no_gpus

    import _fatdispatch

    calls = []
    monkeypatch.setattr(gpu, "probe_gpus", lambda env: calls.append(1) or no_gpus("test"))
    monkeypatch.setattr(_fatdispatch, "driver_present", lambda: (True, ""))  # as on a host with a driver
    load.hardware_for(M, {} if force is None else {"FATDISPATCH_FORCE": force})
    assert bool(calls) == probes_gpu


def test_force_naming_no_fat_module_of_an_imported_package_is_an_error() -> None:
    """``fatdemo.core:baseline`` where fatdemo's fat module is ``fatdemo._core``: an error with a "did you
    mean", not silence; a module of a package not imported yet is left for its own import."""
    from fatdispatch._env import force_for

    env = {"FATDISPATCH_FORCE": "fatdemo.core:baseline"}
    with pytest.raises(ConfigError, match="did you mean fatdemo._core"):
        force_for("fatdemo._core", env, ["fatdemo._core"])
    assert force_for("fatdemo._core", {"FATDISPATCH_FORCE": "otherpkg._core:cuda,v2"}, ["fatdemo._core"]) == "x86-64-v2" or \
        force_for("fatdemo._core", {"FATDISPATCH_FORCE": "otherpkg._core:cuda,v2"}, ["fatdemo._core"]) == "v2"
    assert force_for("fatdemo._core", {"FATDISPATCH_FORCE": "FATDEMO._CORE:Baseline"}, ["fatdemo._core"]) == "baseline"
