"""The GPU probe: NVML answers replayed through the query, CUDA_VISIBLE_DEVICES rules, NVML faults, the cache."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

import pytest

from conftest import FIXTURES, GPU_FIXTURES, FakeNvml, gpu_fixture
from fatdispatch import _nvml
from fatdispatch import _runtime as rt
from fatdispatch import _slowpath as _slow


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
    g = _nvml.query_with_timeout(lambda: _nvml.query_nvml(lambda: FakeNvml(answer("h100-driver580"), hang=5),
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
    code = ("import sys; before=set(sys.modules); import fatdispatch._runtime as r; g=r.probe_gpus({}); "
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
    visible, note = _slow.visible_gpus(GPUS, env)
    assert [g.index for g in visible] == expected
    if value == "1" and order is None:
        assert note and "every GPU" in note


def test_ambiguous_uuid_prefix_ends_the_list() -> None:
    visible, _ = _slow.visible_gpus(SAME, {"CUDA_VISIBLE_DEVICES": "GPU-5eb07142"})
    assert visible == ()


def test_uniform_gpus_map_indices_exactly() -> None:
    visible, note = _slow.visible_gpus(SAME, {"CUDA_VISIBLE_DEVICES": "1"})
    assert [g.index for g in visible] == [1] and note is None


def test_mig_uuid_selects_its_parent() -> None:
    visible, _ = _slow.visible_gpus(MIG, {"CUDA_VISIBLE_DEVICES": "MIG-5e1f0a2b-0000-4000-8000-0000000000a2"})
    assert [g.compute_capability for g in visible] == [(8, 0)]


# ---------------------------------------------------------------- the per-user cache


@pytest.fixture
def cache(tmp_path):
    path = str(tmp_path / "fatdispatch" / "gpu-v1.json")
    key = {"boot_id": "b", "driver": "NVRM 580", "gpus": ["0000:01:00.0"], "machine": "x86_64", "python_bits": True}
    return path, key


def test_cache_round_trip(cache) -> None:
    path, key = cache
    g = gpu_fixture("h100-driver580")
    _nvml.write_cache(path, key, g)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    hit = _slow.read_cache(path, key)
    assert hit is not None and hit.devices == g.devices and hit.source == "cache"


def test_stale_key_is_ignored(cache) -> None:
    path, key = cache
    _nvml.write_cache(path, key, gpu_fixture("h100-driver580"))
    assert _slow.read_cache(path, dict(key, driver="NVRM 590")) is None
    assert _slow.read_cache(path, dict(key, boot_id="rebooted")) is None


def test_world_writable_cache_is_ignored(cache) -> None:
    path, key = cache
    _nvml.write_cache(path, key, gpu_fixture("h100-driver580"))
    os.chmod(path, 0o666)
    assert _slow.read_cache(path, key) is None


def test_corrupt_cache_is_ignored(cache) -> None:
    path, key = cache
    _nvml.write_cache(path, key, gpu_fixture("h100-driver580"))
    for garbage in (b"", b"{", b"[]", b'{"schema": 1, "key": {}, "gpus": 5}', b"\xff\xfe",
                    json.dumps({"schema": 1, "key": key, "gpus": {"devices": [{"compute_capability": [99, 99]}]}}).encode()):
        with open(path, "wb") as f:
            f.write(garbage)
        assert _slow.read_cache(path, key) is None


def test_symlinked_cache_is_ignored(cache, tmp_path) -> None:
    path, key = cache
    target = tmp_path / "elsewhere.json"
    _nvml.write_cache(str(target), key, gpu_fixture("h100-driver580"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    assert _slow.read_cache(path, key) is None


def test_foreign_owned_cache_is_ignored(cache) -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to chown")
    path, key = cache
    _nvml.write_cache(path, key, gpu_fixture("h100-driver580"))
    os.chown(path, 65534, -1)
    assert _slow.read_cache(path, key) is None


def test_cache_never_widens_what_is_runnable(cache, monkeypatch) -> None:
    """A hit in the cache is used only if the driver-derived key matches; otherwise NVML is asked again."""
    path, key = cache
    fake = gpu_fixture("h100-driver580")
    _nvml.write_cache(path, dict(key, boot_id="another boot"), fake)
    assert _slow.read_cache(path, key) is None


def test_cuda_build_failing_to_load_drops_the_cached_gpu_facts(tmp_path, monkeypatch) -> None:
    """If the cache said 'H100 usable' but the CUDA build then fails to load, the cache entry is removed."""
    import json as _json

    from conftest import demo_manifest, machine
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = _slow.cache_path({"XDG_CACHE_HOME": str(tmp_path / "cache")})
    _nvml.write_cache(path, {"k": 1}, gpu_fixture("h100-driver580"))
    assert os.path.exists(path)
    variants = tmp_path / "_core.variants"
    m = demo_manifest()
    for v in m.variants:
        f = variants / (v.file + rt.EXTENSION_SUFFIXES[0])
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"not a shared object")
    (variants / "manifest.json").write_text(_json.dumps({"schema": 1, "module": m.module, "variants": []}))
    hw = machine("host-sapphirerapids-vm", "h100-driver580")
    hw = hw.replace(gpu=hw.gpu.replace(source="cache"))
    sel = rt.select(m, hw, {})
    assert sel.chosen == "cuda-sm90"
    loader = rt.FatLoader(sel, str(variants))
    spec = rt.ModuleSpec(m.module, loader)
    with pytest.raises(rt.NoUsableBuildError) as info:
        loader.create_module(spec)
    assert not os.path.exists(path)  # dropped after the CUDA build failed
    assert "cuda-sm90" in str(info.value) and "baseline" in str(info.value)
