"""The NVIDIA GPU probe: is there a driver, what does NVML say, and the per-user cache of its answer.

* Where no NVIDIA driver is installed it costs one ``access`` per driver file
  (:func:`_fatdispatch.driver_present`) and imports nothing: the full path does not even import this module.
* Otherwise NVML is asked (:mod:`fatdispatch._nvml`) for every device's compute capability and the driver's
  CUDA version, and ``libcuda.so.1`` is checked (containers often mount NVML alone), in a worker thread
  bounded by :data:`NVML_TIMEOUT_S`: a hung driver must not hang ``import``.  Everything the worker needs is
  imported first, in the caller's thread, so it never waits on an import lock the caller holds.
* The answer is cached per user (``<cache>/fatdispatch/gpu-v2/facts``, a private file), keyed by what it
  rests on (:func:`_fatdispatch.gpu_facts_key` less the visibility variables), so most first imports skip
  NVML.  The cache only ever narrows what is usable: a CUDA build that fails to load with it drops it.

``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` are applied afterwards by the pure
:func:`fatdispatch._cuda.visible_gpus`, so the cache does not depend on them.
"""

import _thread
import os
import sys

import _fatdispatch

from ._env import gpu_cache_allowed
from ._manifest import json_loads
from ._privfile import open_private_dir, remove_everywhere, write_private
from ._records import GPU, GPUs, no_gpus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

NVML_TIMEOUT_S = 5.0
CACHE_SCHEMA = 2
CACHE_DIR = f"gpu-v{CACHE_SCHEMA}"
CACHE_FILE = "facts"


# ---------------------------------------------------------------- the per-user cache


def cache_key() -> "str":
    """What a cached NVML answer rests on: the boot, the driver, the GPU set (not the visibility variables)."""
    return f"{_fatdispatch.gpu_facts_key({})} {os.uname().machine if hasattr(os, 'uname') else sys.platform}"


def gpus_to_json(g: "GPUs") -> "dict[str, Any]":
    return {"devices": [{"index": d.index, "name": d.name, "uuid": d.uuid,
                         "compute_capability": list(d.compute_capability), "mig_uuids": list(d.mig_uuids)}
                        for d in g.devices],
            "driver_version": g.driver_version,
            "cuda_driver_version": list(g.cuda_driver_version) if g.cuda_driver_version else None,
            "libcuda": g.libcuda, "reason": g.reason}


def gpus_from_json(data: "Any", source: "str") -> "GPUs":
    """Rebuild :class:`GPUs` from cached JSON; raises ValueError/TypeError/KeyError on any doubt."""
    if not isinstance(data, dict):
        raise ValueError("not an object")
    devices = []
    for d in data["devices"]:
        cc = d["compute_capability"]
        if not (isinstance(cc, list) and len(cc) == 2 and all(type(x) is int and 0 <= x < 100 for x in cc)):
            raise ValueError("bad compute capability")
        if type(d["index"]) is not int or not isinstance(d["uuid"], str) or not isinstance(d["name"], str):
            raise ValueError("bad device")
        migs = d["mig_uuids"]
        if not all(isinstance(m, str) for m in migs):
            raise ValueError("bad MIG list")
        devices.append(GPU(index=d["index"], name=d["name"], uuid=d["uuid"], compute_capability=(cc[0], cc[1]),
                           mig_uuids=tuple(migs)))
    cv = data["cuda_driver_version"]
    if cv is not None and not (isinstance(cv, list) and len(cv) == 2 and all(type(x) is int for x in cv)):
        raise ValueError("bad CUDA version")
    reason = data["reason"]
    if reason is not None and not isinstance(reason, str):
        raise ValueError("bad reason")
    if type(data["libcuda"]) is not bool or not isinstance(data["driver_version"], str):
        raise ValueError("bad driver facts")
    return GPUs(devices=tuple(devices), driver_version=data["driver_version"],
                cuda_driver_version=(cv[0], cv[1]) if cv else None, libcuda=data["libcuda"], source=source,
                reason=reason)


def read_cache(env: "Mapping[str, str]", key: "str") -> "GPUs | None":
    """The cached answer, or None when missing, stale, not private or malformed."""
    try:
        fd, _ = open_private_dir(env, CACHE_DIR, False)
    except OSError:
        return None
    try:
        data = _fatdispatch.read_private(fd, CACHE_FILE, 65536)
    finally:
        os.close(fd)
    if data is None:
        return None
    try:
        doc = json_loads(data)
        if doc.get("schema") != CACHE_SCHEMA or doc.get("key") != key:
            return None
        return gpus_from_json(doc["gpus"], "cache")
    except (AttributeError, ValueError, TypeError, KeyError):
        return None


def write_cache(env: "Mapping[str, str]", key: "str", gpus: "GPUs") -> "None":
    """Write the GPU answer to the per-user cache (atomically, privately); failures only mean no cache."""
    import json

    data = json.dumps({"schema": CACHE_SCHEMA, "key": key, "gpus": gpus_to_json(gpus)}).encode()
    try:
        fd, _ = open_private_dir(env, CACHE_DIR, True)
    except OSError:
        return
    try:
        write_private(fd, CACHE_FILE, data)
    except OSError:
        pass
    finally:
        os.close(fd)


def drop_cache(env: "Mapping[str, str]") -> "None":
    remove_everywhere(env, CACHE_DIR, CACHE_FILE)


# ---------------------------------------------------------------- asking NVML


def query_with_timeout(query: "Callable[[], GPUs]", timeout: "float" = NVML_TIMEOUT_S) -> "GPUs":
    """Run ``query`` in a daemon thread; a hung driver must not hang ``import``."""
    box: "list[GPUs]" = []
    done = _thread.allocate_lock()
    done.acquire()

    def worker() -> "None":
        try:
            box.append(query())
        except BaseException as exc:  # noqa: BLE001 - any failure means "no usable GPU"
            box.append(no_gpus(f"GPU probe failed: {type(exc).__name__}: {exc}", "nvml"))
        finally:
            done.release()

    _thread.start_new_thread(worker, ())
    if not done.acquire(True, timeout):
        return no_gpus(f"NVML did not answer within {timeout:g} s; treating the GPU as unusable", "nvml")
    return box[0]


_gpu_lock = _thread.allocate_lock()
_gpu_cached: "GPUs | None" = None
gpu_probe_count = 0


def probe_gpus(env: "Mapping[str, str] | None" = None) -> "GPUs":
    """This machine's NVIDIA GPUs, probed once per process and cached per user on disk."""
    global _gpu_cached, gpu_probe_count
    if _gpu_cached is not None:
        return _gpu_cached
    with _gpu_lock:
        if _gpu_cached is None:
            gpu_probe_count += 1
            _gpu_cached = _probe_uncached(os.environ if env is None else env)
        return _gpu_cached


def _probe_uncached(env: "Mapping[str, str]") -> "GPUs":
    present, why = _fatdispatch.driver_present()
    if not present:
        return no_gpus(why)
    use_cache = gpu_cache_allowed(env)
    key = cache_key()
    if use_cache:
        hit = read_cache(env, key)
        if hit is not None:
            return hit
    import ctypes  # noqa: F401 - here, in the importing thread: the worker below must import nothing

    from . import _nvml

    result = query_with_timeout(_nvml.query_nvml)
    if use_cache and "did not answer" not in (result.reason or ""):
        write_cache(env, key, result)
    return result


def forget_gpus() -> "None":
    """Drop the in-process GPU answer (the next probe asks again)."""
    global _gpu_cached
    with _gpu_lock:
        _gpu_cached = None
