"""The GPU probe: NVML answers replayed through the query, CUDA_VISIBLE_DEVICES rules, NVML faults, the cache."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from conftest import FIXTURES, GPU_FIXTURES, FakeNvml, gpu_fixture
from fatdispatch import _cuda, _gpu, _nvml


def answer(name: str) -> dict:
    return json.loads((FIXTURES / "gpu" / f"{name}.json").read_text())


@pytest.mark.parametrize("name", GPU_FIXTURES)
def test_replayed_nvml_answers(name: str) -> None:
    g = gpu_fixture(name)
    a = answer(name)
    assert [d.compute_capability for d in g.devices] == [tuple(d["compute_capability"]) for d in a["devices"]]
    assert g.cuda_driver_version == (a["cuda_driver_version"] // 1000, a["cuda_driver_version"] % 1000 // 10)
    assert g.reason is None and g.libcuda


def test_nvml_without_libcuda_is_unusable() -> None:
    g = gpu_fixture("h100-driver580", libcuda=False)
    assert g.devices and g.reason and "libcuda.so.1" in g.reason


@pytest.mark.parametrize("call,code", [
    ("init", 12),  # LibraryNotFound
    ("init", 9),  # DriverNotLoaded
    ("init", 4),  # NoPermission
    ("init", 18),  # LibRmVersionMismatch
    ("device_count", 15),  # GpuIsLost
    ("compute_capability", 3),  # NotSupported
    ("cuda_driver_version", 13),  # FunctionNotFound
    ("uuid", 999),  # Unknown
])
def test_every_nvml_error_means_no_usable_gpu(call: str, code: int) -> None:
    g = _nvml.query_nvml(lambda: FakeNvml(answer("h100-driver580"), {call: code}), lambda: True)
    assert g.devices == () and g.reason is not None
    assert str(code) in g.reason and _nvml.NvmlError.NAMES.get(code, "") in g.reason


def test_missing_nvml_library() -> None:
    def factory() -> FakeNvml:
        raise _nvml.NvmlError(12, "dlopen(libnvidia-ml.so.1)")
    g = _nvml.query_nvml(factory, lambda: True)
    assert "LibraryNotFound" in (g.reason or "")


def test_hung_nvml_is_bounded() -> None:
    started = time.perf_counter()
    g = _gpu.query_with_timeout(lambda: _nvml.query_nvml(lambda: FakeNvml(answer("h100-driver580"), hang=5),
                                                          lambda: True), timeout=0.3)
    assert time.perf_counter() - started < 2
    assert "did not answer" in (g.reason or "")


def test_ctypes_nvml_reports_library_not_found_here() -> None:
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    g = _nvml.query_nvml()
    assert g.devices == () and "NVML" in (g.reason or "")


def test_no_driver_costs_one_check_and_imports_nothing() -> None:
    if os.path.exists("/proc/driver/nvidia/version"):
        pytest.skip("this machine has an NVIDIA driver")
    import subprocess
    code = ("import sys; before=set(sys.modules); import fatdispatch._gpu as r; g=r.probe_gpus({}); "
            "print(g.reason); print(','.join(m for m in ('ctypes','pynvml','fatdispatch._nvml','threading','json') "
            "if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert "no NVIDIA driver" in out[0]
    assert out[1] == ""


GPUS = gpu_fixture("mixed-t4-h100-driver580").devices  # T4 (7.5) at index 0, H100 (9.0) at index 1
SAME = gpu_fixture("two-h100-driver580").devices
MIG = gpu_fixture("a100-driver580").devices


@pytest.mark.parametrize("value,order,expected", [
    (None, None, [0, 1]),
    ("", None, []),
    ("-1", None, []),
    ("1", "PCI_BUS_ID", [1]),
    ("1,0", "PCI_BUS_ID", [1, 0]),
    ("0,7,1", "PCI_BUS_ID", [0]),  # an out-of-range entry ends the list
    ("0,x,1", "PCI_BUS_ID", [0]),  # an invalid entry ends the list
    ("0,-1,1", "PCI_BUS_ID", [0]),  # a negative entry ends the list
    ("1abc", "PCI_BUS_ID", [1]),  # strtoul reads the leading digits
    ("0,0", "PCI_BUS_ID", []),  # a duplicate hides every device
    ("GPU-5eb07142", None, [1]),  # a unique UUID prefix
    ("GPU-1b7c3f2e-0000-4000-8000-000000000075", None, [0]),
    ("GPU-ffff", None, []),  # an unknown UUID ends the list
    ("1", None, [0, 1]),  # mixed models in FASTEST_FIRST order: the index could be either device
])
def test_cuda_visible_devices(value: str | None, order: str | None, expected: list[int]) -> None:
    env = {}
    if value is not None:
        env["CUDA_VISIBLE_DEVICES"] = value
    if order:
        env["CUDA_DEVICE_ORDER"] = order
    visible, note = _cuda.visible_gpus(GPUS, env)
    assert [g.index for g in visible] == expected
    if value == "1" and order is None:
        assert note and "every GPU" in note


def test_ambiguous_uuid_prefix_ends_the_list() -> None:
    visible, _ = _cuda.visible_gpus(SAME, {"CUDA_VISIBLE_DEVICES": "GPU-5eb07142"})
    assert visible == ()


def test_uniform_gpus_map_indices_exactly() -> None:
    visible, note = _cuda.visible_gpus(SAME, {"CUDA_VISIBLE_DEVICES": "1"})
    assert [g.index for g in visible] == [1] and note is None


def test_mig_uuid_selects_its_parent() -> None:
    visible, _ = _cuda.visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": "MIG-5e1f0a2b-0000-4000-8000-0000000000a2"})
    assert [g.compute_capability for g in visible] == [(8, 0)]


# ---------------------------------------------------------------- the per-user cache


@pytest.fixture
def cache(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    path = tmp_path / "cache" / "fatdispatch" / _gpu.CACHE_DIR / _gpu.CACHE_FILE
    return env, "the key", path


def test_cache_round_trip(cache) -> None:
    env, key, path = cache
    g = gpu_fixture("h100-driver580")
    _gpu.write_cache(env, key, g)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    hit = _gpu.read_cache(env, key)
    assert hit is not None and hit.devices == g.devices and hit.source == "cache"


def test_stale_key_is_ignored(cache) -> None:
    env, key, _ = cache
    _gpu.write_cache(env, key, gpu_fixture("h100-driver580"))
    assert _gpu.read_cache(env, "another boot") is None


def test_key_follows_what_the_facts_rest_on() -> None:
    """No driver at all is a key of its own; with the visibility variables left out (applied afterwards)."""
    key = _gpu.cache_key()
    assert ("no-driver" in key) == (not os.path.exists("/proc/driver/nvidia/version"))
    import _fatdispatch

    assert _fatdispatch.gpu_facts_key({"CUDA_VISIBLE_DEVICES": "1"}) == _fatdispatch.gpu_facts_key({}) or \
        os.path.exists("/proc/driver/nvidia/version")


def test_world_writable_cache_is_ignored(cache) -> None:
    env, key, path = cache
    _gpu.write_cache(env, key, gpu_fixture("h100-driver580"))
    os.chmod(path, 0o666)
    assert _gpu.read_cache(env, key) is None


def test_corrupt_cache_is_ignored(cache) -> None:
    env, key, path = cache
    _gpu.write_cache(env, key, gpu_fixture("h100-driver580"))
    for garbage in (b"", b"{", b"[]", b'{"schema": 2, "key": "the key", "gpus": 5}', b"\xff\xfe",
                    json.dumps({"schema": 2, "key": key, "gpus": {"devices": [{"compute_capability": [99, 99]}]}}).encode()):
        path.write_bytes(garbage)
        assert _gpu.read_cache(env, key) is None


def test_symlinked_cache_is_ignored(cache, tmp_path) -> None:
    env, key, path = cache
    _gpu.write_cache({"XDG_CACHE_HOME": str(tmp_path / "elsewhere")}, key, gpu_fixture("h100-driver580"))
    path.parent.mkdir(parents=True, mode=0o700)
    os.symlink(tmp_path / "elsewhere" / "fatdispatch" / _gpu.CACHE_DIR / _gpu.CACHE_FILE, path)
    assert _gpu.read_cache(env, key) is None


def test_foreign_owned_cache_is_ignored(cache) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    env, key, path = cache
    _gpu.write_cache(env, key, gpu_fixture("h100-driver580"))
    os.chown(path, 65534, -1)
    assert _gpu.read_cache(env, key) is None


def test_unloadable_cuda_builds_fall_back_to_the_cpu(tmp_path, monkeypatch) -> None:
    """Cached GPU facts say an H100 is usable, but no CUDA build is a loadable file: every attempt is listed."""
    import json as _json

    import _fatdispatch
    from conftest import demo_manifest, machine
    from fatdispatch import _load
    from fatdispatch._errors import NoUsableBuildError
    from fatdispatch._select import select

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    monkeypatch.setenv("XDG_CACHE_HOME", env["XDG_CACHE_HOME"])
    _gpu.write_cache(env, "k", gpu_fixture("h100-driver580"))
    path = tmp_path / "cache" / "fatdispatch" / _gpu.CACHE_DIR / _gpu.CACHE_FILE
    assert path.exists()
    variants = tmp_path / "_core.variants"
    m = demo_manifest()
    for v in m.variants:
        f = variants / (v.file + _fatdispatch.EXTENSION_SUFFIXES[0])
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"not a shared object")
    (variants / "manifest.json").write_text(_json.dumps({"schema": 1, "module": m.module, "variants": []}))
    hw = machine("host-sapphirerapids-vm", "h100-driver580")
    hw = hw.replace(gpu=hw.gpu.replace(source="cache"))
    sel = select(m, hw, {})
    assert sel.chosen == "cuda-sm90"
    spec = _fatdispatch.ModuleSpec(m.module, _fatdispatch)
    with pytest.raises(NoUsableBuildError) as info:
        _load.load_selection(spec, str(variants), sel, env)
    assert "cuda-sm90" in str(info.value) and "baseline" in str(info.value)
    assert "not an ELF" in str(info.value)
