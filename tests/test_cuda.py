"""The CUDA rules in fatdispatch._cuda, each checked against the document it follows, and their use by select().

[PG] CUDA C++ Programming Guide (binary/PTX compatibility, family- and architecture-specific features);
[CG] CUDA Compatibility guide (minor-version compatibility, driver floors); [PT] PyTorch torch/cuda/__init__.py
_parse_visible_devices / _transform_uuid_to_ordinals; [MIG] NVIDIA MIG User Guide (CUDA device enumeration).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest

from conftest import machine
from fatdispatch import _cuda
from fatdispatch._cuda import runtime_ok, sm_fit, visible_gpus
from fatdispatch._manifest import parse_manifest
from fatdispatch._select import select


class Dev(NamedTuple):
    uuid: str
    compute_capability: tuple[int, int]
    mig_uuids: tuple[str, ...] = ()
    mig_ids: tuple[tuple[int, int], ...] | None = None


def test_module_is_pure() -> None:
    """_cuda imports nothing from fatdispatch, so every layer (select, explain, the build side) may use it."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(_cuda))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert all(m in ("__future__", "typing") for m in imported), imported


# ---------------------------------------------------------------- [PG] binary compatibility


@pytest.mark.parametrize("sass,ptx,cc,fit", [
    (("80",), (), (8, 6), 2),     # [PG] sm_80 cubin runs on 8.6: same major, higher minor
    (("86",), (), (8, 0), 0),     # never on a lower minor
    (("80",), (), (9, 0), 0),     # never across majors
    (("90a",), (), (9, 0), 3),    # [PG] arch-specific: exactly 9.0 ...
    (("90a",), (), (10, 0), 0),   # ... and nothing else
    (("100a",), (), (10, 3), 0),
    (("100f",), (), (10, 3), 2),  # [PG] family-specific: 100f covers 10.0 and 10.3
    (("100f",), (), (10, 0), 3),
    (("100f",), (), (12, 0), 0),
    (("100f",), (), (11, 0), 0),
    (("120f",), (), (12, 1), 2),
])
def test_sass(sass: tuple[str, ...], ptx: tuple[str, ...], cc: tuple[int, int], fit: int) -> None:
    assert sm_fit(sass, ptx, cc) == fit


@pytest.mark.parametrize("sass,ptx,cc,fit", [
    (("80", "86"), (), (8, 7), 0),   # [PG] no SASS compatibility between desktop parts and Tegra (Orin 8.7)
    (("87",), (), (8, 7), 3),        # only a cubin built for that Tegra target
    (("87",), (), (8, 9), 0),        # ... which runs on no desktop part
    (("72",), (), (7, 5), 0),        # Xavier's cubin is not Turing's
    (("80", "86"), ("80",), (8, 7), 1),  # PTX JIT-compiles on Tegra
    (("110f",), (), (11, 0), 3),     # Thor (11.0 from CUDA 13): its own target
    (("100f",), (), (11, 0), 0),
])
def test_tegra(sass: tuple[str, ...], ptx: tuple[str, ...], cc: tuple[int, int], fit: int) -> None:
    assert sm_fit(sass, ptx, cc) == fit


def test_tegra_flag_overrides_the_capability_table() -> None:
    assert sm_fit(("86",), (), (8, 9), tegra=True) == 0  # a Tegra part named by the caller
    assert sm_fit(("80",), (), (8, 7), tegra=False) == 2  # (no such desktop part exists; the flag decides)


@pytest.mark.parametrize("ptx,cc,fit", [
    (("75",), (12, 0), 1),    # [PG] plain PTX is forward-compatible to any later capability
    (("90",), (8, 9), 0),
    (("100f",), (10, 3), 1),  # [PG] compute_100f only inside its family ...
    (("100f",), (11, 0), 0),
    (("100f",), (12, 0), 0),
    (("90a",), (9, 0), 1),    # compute_90a only on exactly 9.0
    (("90a",), (10, 0), 0),
])
def test_ptx(ptx: tuple[str, ...], cc: tuple[int, int], fit: int) -> None:
    assert sm_fit((), ptx, cc) == fit


def test_exact_rank_a_over_f_over_plain() -> None:
    """[PG] family features are a superset of the baseline's, architecture-specific ones of the family's."""
    assert _cuda.exact_rank(("90a",), (9, 0)) > _cuda.exact_rank(("90",), (9, 0)) > 0
    assert _cuda.exact_rank(("100a",), (10, 0)) > _cuda.exact_rank(("100f",), (10, 0)) > _cuda.exact_rank(("100",), (10, 0))
    assert _cuda.exact_rank(("100f",), (10, 3)) == 0  # compatible, not exact: ranked by fit, not here


def _cuda_manifest(builds: list[tuple[str, list[str], list[str], list[int]]], arch: str = "x86_64") -> object:
    variants = [{"name": "baseline", "kind": "cpu", "file": "baseline/_core", "arch": arch,
                 "requires": {"features": []}}]
    for name, sass, ptx, runtime in builds:
        variants.append({"name": name, "kind": "cuda", "file": f"{name}/_core", "arch": arch,
                         "requires": {"features": [], "cuda": {"sass": sass, "ptx": ptx, "runtime": runtime}}})
    return parse_manifest({"schema": 1, "module": "pkg._core", "variants": variants}, "<test>")


def test_select_ranks_arch_specific_above_plain_whatever_the_manifest_order() -> None:
    m = _cuda_manifest([("cuda-sm90", ["90"], [], [13, 0]), ("cuda-sm90a", ["90a"], [], [13, 0])])
    sel = select(m, machine("host-sapphirerapids-vm", "h100-driver580"), {})  # type: ignore[arg-type]
    assert sel.order[:2] == ("cuda-sm90a", "cuda-sm90")
    m = _cuda_manifest([("cuda-sm100", ["100"], [], [13, 0]), ("cuda-sm100a", ["100a"], [], [13, 0]),
                        ("cuda-sm100f", ["100f"], [], [13, 0])])
    sel = select(m, machine("host-sapphirerapids-vm", "b200-driver580"), {})  # type: ignore[arg-type]
    assert sel.order[:3] == ("cuda-sm100a", "cuda-sm100f", "cuda-sm100")


# ---------------------------------------------------------------- [CG] driver and runtime


@pytest.mark.parametrize("runtime,driver,sass,ptx,ok", [
    ((13, 0), (13, 0), True, False, True),
    ((13, 1), (13, 0), True, False, True),    # [CG] minor-version compatibility: SASS runs ...
    ((13, 1), (13, 0), False, True, False),   # ... PTX does not (error 222)
    ((12, 8), (12, 2), True, False, True),
    ((12, 8), (12, 2), False, True, False),
    ((13, 0), (12, 9), True, False, False),   # never across majors
    ((12, 4), (13, 0), False, True, True),    # an older build on a newer driver: always
    ((13, 0), None, True, False, False),
])
def test_runtime_ok(runtime: tuple[int, int], driver: tuple[int, int] | None, sass: bool, ptx: bool, ok: bool) -> None:
    got, why = runtime_ok(runtime, driver, sass, ptx)
    assert got is ok
    if not ok:
        assert why and "update the NVIDIA driver" in why
        if driver and driver[0] == runtime[0]:
            assert f"supporting CUDA {runtime[0]}.{runtime[1]}" in why
    elif driver and driver < runtime:
        assert why and "minor-version compatibility" in why


def test_refusal_names_the_floor_of_the_builds_major() -> None:
    """[CG] 12.x needs driver >= 525, 13.x >= 580: the message names the right one."""
    assert "CUDA 12.x needs driver >= 525" in (runtime_ok((12, 8), (11, 8), True, False)[1] or "")
    assert "CUDA 13.x needs driver >= 580" in (runtime_ok((13, 0), (12, 2), True, False)[1] or "")
    assert _cuda.driver_floor(12) == 525 and _cuda.driver_floor(13) == 580
    ok, why = runtime_ok((12, 8), (12, 0), True, False, driver_version="520.61.05")  # below 12.x's floor
    assert not ok and "525" in (why or "")


def test_select_takes_a_13_1_sass_build_on_a_13_0_driver_but_not_its_ptx() -> None:
    m = _cuda_manifest([("cuda-sm90", ["90"], [], [13, 1]), ("cuda-ptx90", [], ["90"], [13, 1])])
    sel = select(m, machine("host-sapphirerapids-vm", "h100-driver580"), {})  # type: ignore[arg-type]
    assert sel.chosen == "cuda-sm90"
    assert "JIT" in sel.candidate("cuda-ptx90").reason and not sel.candidate("cuda-ptx90").usable


# ---------------------------------------------------------------- [PT] CUDA_VISIBLE_DEVICES

A = Dev("GPU-abc11111-0000", (9, 0))
B = Dev("GPU-abd22222-0000", (9, 0))
C = Dev("GPU-abc13333-0000", (9, 0))
MIGGPU = Dev("GPU-m1000000-0000", (8, 0), ("MIG-aaaa0001", "MIG-aaaa0002"), ((1, 0), (2, 0)))


@pytest.mark.parametrize("value,expected", [
    ("GPU-abc11,GPU-abd", [A, B]),
    ("GPU-abc11,GPU-abc111", []),        # [PT] one GPU by two spellings: a duplicate ordinal, so none
    ("GPU-abc1", []),                    # ambiguous prefix (A and C) ends the list at once
    ("GPU-abd,GPU-abc1,GPU-abc11", [B]),  # ... or where it stands
    ("GPU-abd,0", [B]),                  # an entry without the prefix ends a UUID list
    ("gpu-abd", []),                     # [PT] case-sensitive: not a UUID list; strtoul reads no digits
    ("GPU-ABD", []),
    (" GPU-abd", []),                    # not stripped in UUID form
    ("GPU-abd ", []),
    ("+1", [B]),                          # [PT] strtoul accepts a sign
    ("-0", [A]),
    ("-1,0", []),
    ("1, 0", [B, A]),                     # indices are stripped
    ("1gpu,2x", [B, C]),
    ("1,+1", []),                         # the same index twice, spelt differently: none
    ("0,3,1", [A]),                       # past the last device ends the list
])
def test_visible_devices(value: str, expected: list[Dev]) -> None:
    visible, note = visible_gpus([A, B, C], {"CUDA_VISIBLE_DEVICES": value})
    assert list(visible) == expected, note
    if not expected:
        assert note


def test_mig_prefix_is_ambiguous_per_instance() -> None:
    """[MIG]/[PT] a MIG- prefix shared by two instances of one GPU names neither."""
    assert visible_gpus([MIGGPU], {"CUDA_VISIBLE_DEVICES": "MIG-aaaa"})[0] == ()
    assert visible_gpus([MIGGPU], {"CUDA_VISIBLE_DEVICES": "MIG-aaaa0002"})[0] == (MIGGPU,)
    both, _ = visible_gpus([MIGGPU], {"CUDA_VISIBLE_DEVICES": "MIG-aaaa0001,MIG-aaaa0002"})
    assert both == (MIGGPU,)  # two instances of one GPU: its code must fit that GPU, listed once
    assert visible_gpus([MIGGPU], {"CUDA_VISIBLE_DEVICES": "MIG-aaaa0001,MIG-aaaa0001"})[0] == ()


def test_legacy_mig_form() -> None:
    """[MIG] MIG-GPU-<gpu uuid>/<gpu instance>/<compute instance>."""
    env = {"CUDA_VISIBLE_DEVICES": f"MIG-{MIGGPU.uuid}/2/0"}
    assert visible_gpus([A, MIGGPU], env)[0] == (MIGGPU,)
    assert visible_gpus([A, MIGGPU], {"CUDA_VISIBLE_DEVICES": f"MIG-{MIGGPU.uuid}/5/0"})[0] == ()
    assert visible_gpus([A, MIGGPU], {"CUDA_VISIBLE_DEVICES": f"MIG-{A.uuid}/1/0"})[0] == ()  # A has no MIG


def test_index_with_mixed_models_may_be_any_gpu() -> None:
    t4 = Dev("GPU-t4", (7, 5))
    visible, note = visible_gpus([t4, A], {"CUDA_VISIBLE_DEVICES": "1"})
    assert visible == (t4, A) and note and "every GPU" in note
    visible, note = visible_gpus([t4, A], {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert visible == (A,) and note is None
