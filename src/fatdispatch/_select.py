"""Choosing a build: a pure function of (manifest, hardware, environment).

:func:`select` ranks every build of a manifest and gives every build that was
not chosen a reason.  It reads nothing and probes nothing: tests hand it
recorded machines and plain dicts for the environment.

Ranking, best first:

1. usable CUDA builds (only when a usable NVIDIA GPU is visible): exact SASS for
   every visible GPU, then compatible SASS, then PTX (JIT); then the packager's
   priority; then the highest SM;
2. usable CPU builds: the packager's ``priority`` (default 0), then the
   x86-64 level, then the number of required features.

Environment (all case-insensitive values):

``FATDISPATCH_FORCE``
    ``[module:]value[,...]`` where value is a build name, ``cpu`` (best CPU
    build), ``cuda`` (best CUDA build) or ``baseline`` (the lowest CPU build).
    Aliases: ``avx512`` = ``x86-64-v4``, ``avx2`` = ``x86-64-v3``,
    ``sse4`` = ``x86-64-v2``, ``v1`` .. ``v4``, ``gpu`` = ``cuda``.
``FATDISPATCH_UNSAFE_FORCE=1``
    load a forced build even where this machine cannot run it.
``FATDISPATCH_DISABLE``
    comma-separated CPU feature names to treat as absent.
``FATDISPATCH_VERBOSE=1``
    print the decision to stderr.
``FATDISPATCH_GPU_CACHE=0``
    do not read or write the per-user GPU cache.
"""

from __future__ import annotations

from . import _cpu, _gpu
from ._errors import ConfigError
from ._records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

    from ._manifest import Manifest, Variant

KNOWN_VARIABLES = ("FATDISPATCH_FORCE", "FATDISPATCH_UNSAFE_FORCE", "FATDISPATCH_DISABLE", "FATDISPATCH_VERBOSE",
                   "FATDISPATCH_GPU_CACHE")
CATEGORIES = ("cpu", "cuda", "baseline")
ALIASES = {"avx512": "x86-64-v4", "avx2": "x86-64-v3", "sse4": "x86-64-v2", "v4": "x86-64-v4",
           "v3": "x86-64-v3", "v2": "x86-64-v2", "v1": "baseline", "x86-64-v1": "baseline", "gpu": "cuda"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
MATCH_NAMES = {3: "exact SASS", 2: "compatible SASS", 1: "PTX (JIT-compiled at first load)"}


class Hardware(Record):
    __slots__ = ("cpu", "gpu")
    cpu: _cpu.CPU
    gpu: _gpu.GPUs


class Candidate(Record):
    """One build, whether it can run here (``usable``), and why it was or was not chosen."""

    __slots__ = ("variant", "usable", "reason", "score")
    variant: Variant
    usable: bool
    reason: str
    score: tuple[int, ...]


class Selection(Record):
    """The ranked decision for one fat module.

    ``order`` names the builds the loader tries, in order (normally every usable
    build, best first).  ``error`` is set when nothing may be loaded, with the
    reason; ``candidates`` lists every build, ``order`` first.
    """

    __slots__ = ("module", "candidates", "order", "forced", "hardware", "notes", "error")
    module: str
    candidates: tuple[Candidate, ...]
    order: tuple[str, ...]
    forced: str | None
    hardware: Hardware
    notes: tuple[str, ...]
    error: str | None

    @property
    def chosen(self) -> str | None:
        return self.order[0] if self.order else None

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.variant.name == name:
                return c
        raise KeyError(name)


# ---------------------------------------------------------------- environment


def boolean(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(name, raw, "expected 1/true/yes/on or 0/false/no/off")


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """Messages for ``FATDISPATCH_*`` names that fatdispatch does not know (typos)."""
    out = []
    for key in env:
        if key.upper().startswith("FATDISPATCH_") and key not in KNOWN_VARIABLES:
            close = _close(key.upper(), KNOWN_VARIABLES)
            hint = f"; did you mean {close}?" if close else f"; known: {', '.join(KNOWN_VARIABLES)}"
            out.append(f"fatdispatch: ignoring unknown environment variable {key}{hint}")
    return out


def _close(word: str, options: tuple[str, ...] | list[str]) -> str | None:
    """A cheap "did you mean": the option sharing the most characters in order (no difflib import)."""
    best, best_score = None, 0.0
    for opt in options:
        # longest common subsequence ratio
        prev = [0] * (len(opt) + 1)
        for ch in word:
            cur = [0]
            for j, oc in enumerate(opt):
                cur.append(prev[j] + 1 if ch == oc else max(prev[j + 1], cur[j]))
            prev = cur
        score = 2.0 * prev[-1] / (len(word) + len(opt))
        if score > best_score:
            best, best_score = opt, score
    return best if best_score >= 0.75 else None


def disabled_features(env: Mapping[str, str], known: set[str] | frozenset[str]) -> frozenset[str]:
    raw = env.get("FATDISPATCH_DISABLE")
    if raw is None:
        return frozenset()
    names = [n.strip().lower() for n in raw.replace(" ", ",").split(",")]
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad:
        close = _close(bad[0], sorted(known))
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ConfigError("FATDISPATCH_DISABLE", raw,
                          f"unknown CPU feature {bad[0]!r}{hint}; known features: {', '.join(sorted(known))}")
    return frozenset(names)


def force_for(module: str, env: Mapping[str, str]) -> str | None:
    """The ``FATDISPATCH_FORCE`` value that applies to ``module``, lower-cased, or None.

    A ``module:value`` item wins over a bare value; two different items for the
    same module are an error.
    """
    raw = env.get("FATDISPATCH_FORCE")
    if raw is None or not raw.strip():
        return None
    generic: list[str] = []
    specific: list[str] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        mod, sep, value = item.rpartition(":")
        value = value.strip().lower()
        if not value or "/" in value or "\\" in value:
            raise ConfigError("FATDISPATCH_FORCE", raw, f"{item!r} is not a build name (a value never names a file)")
        if not sep:
            generic.append(value)
        elif mod.strip().lower() == module.lower():
            specific.append(value)
    chosen = specific or generic
    if len(set(chosen)) > 1:
        raise ConfigError("FATDISPATCH_FORCE", raw, f"asks for several builds of {module}: {', '.join(chosen)}")
    return chosen[0] if chosen else None


def effective_hardware(hw: Hardware, env: Mapping[str, str]) -> Hardware:
    """``hw`` with ``FATDISPATCH_DISABLE`` applied."""
    table = _cpu.feature_table()
    known = set(table["x86"]["bits"]) | set(table["aarch64"]["hwcap"]) | set(table["aarch64"]["hwcap2"])
    off = disabled_features(env, known)
    if not off:
        return hw
    return hw.replace(cpu=_cpu.without(hw.cpu, off, "FATDISPATCH_DISABLE", table))


# ---------------------------------------------------------------- judging one build


def _missing_features(v: Variant, cpu: _cpu.CPU) -> str | None:
    if v.arch != cpu.arch:
        return f"built for {v.arch}; this machine is {cpu.arch}"
    missing = sorted(v.features - cpu.features)
    if v.x86_64_level is not None and (cpu.x86_64_level or 0) < v.x86_64_level and not missing:
        return f"needs x86-64-v{v.x86_64_level}; this CPU is x86-64-v{cpu.x86_64_level or 0}"
    if not missing:
        return None
    text = f"needs {', '.join(missing)}, which this CPU lacks"
    if v.x86_64_level is not None and (cpu.x86_64_level or 0) < v.x86_64_level:
        text = f"needs x86-64-v{v.x86_64_level}; this CPU is x86-64-v{cpu.x86_64_level or 0} (lacks {', '.join(missing)})"
    related = [n for n in cpu.notes if any(m in n for m in missing)]
    if related:
        text += " [" + "; ".join(related) + "]"
    return text


def sm_fit(sass: tuple[str, ...], ptx: tuple[str, ...], cc: tuple[int, int]) -> int:
    """How a CUDA build's code fits one GPU: 3 exact SASS, 2 compatible SASS, 1 PTX, 0 none.

    Real ``sm_XY`` SASS runs on X.Y' with the same major and Y' >= Y; ``sm_XYa``
    only on exactly X.Y; ``sm_XYf`` on the same major with Y' >= Y (its family);
    PTX ``compute_XY`` JIT-compiles for any capability >= X.Y (``compute_XYa``
    only for exactly X.Y).
    """
    from ._manifest import parse_sm

    best = 0
    for t in sass:
        major, minor, suffix = parse_sm(t)
        if suffix == "a":
            fit = 3 if cc == (major, minor) else 0
        elif cc[0] == major and cc[1] >= minor:
            fit = 3 if cc[1] == minor else 2
        else:
            fit = 0
        best = max(best, fit)
    if best:
        return best
    for t in ptx:
        major, minor, suffix = parse_sm(t)
        if (suffix == "a" and cc == (major, minor)) or (suffix != "a" and cc >= (major, minor)):
            return 1
    return 0


def _targets_text(v: Variant) -> str:
    assert v.cuda is not None
    parts = [f"sm_{t}" for t in v.cuda.sass] + [f"compute_{t} (PTX)" for t in v.cuda.ptx]
    return ", ".join(parts)


def _judge_cuda(v: Variant, gpu: _gpu.GPUs, visible: tuple[_gpu.GPU, ...], vis_note: str | None) -> tuple[str | None, int]:
    assert v.cuda is not None
    if gpu.reason is not None:
        return f"no usable NVIDIA GPU: {gpu.reason}", 0
    if not visible:
        return f"no usable NVIDIA GPU: {vis_note or 'none visible'}", 0
    drv = gpu.cuda_driver_version
    need = v.cuda.runtime
    if drv is None or drv < need:
        have = f"{drv[0]}.{drv[1]}" if drv else "unknown"
        return (f"built with CUDA {need[0]}.{need[1]}, but the driver supports CUDA {have}: "
                f"update the NVIDIA driver (CUDA 13 needs driver >= 580)"), 0
    fits = []
    for g in visible:
        fit = sm_fit(v.cuda.sass, v.cuda.ptx, g.compute_capability)
        if fit == 0:
            cc = g.compute_capability
            return (f"no code for GPU {g.index} ({g.name}, compute capability {cc[0]}.{cc[1]}): "
                    f"the build carries {_targets_text(v)}"), 0
        fits.append(fit)
    return None, min(fits)


# ---------------------------------------------------------------- the decision


def select(manifest: Manifest, hardware: Hardware, env: Mapping[str, str]) -> Selection:
    """Rank every build of ``manifest`` for ``hardware`` under ``env``.

    Pure.  Raises :class:`ConfigError` only for malformed ``FATDISPATCH_*``
    values; every other problem is recorded in the returned selection.
    """
    module = manifest.module
    hw = effective_hardware(hardware, env)
    forced = force_for(module, env)
    unsafe = boolean(env, "FATDISPATCH_UNSAFE_FORCE")
    notes: list[str] = []
    visible, vis_note = _gpu.visible_gpus(hw.gpu.devices, env)
    if vis_note:
        notes.append(vis_note)

    judged: list[tuple[Variant, str | None, tuple[int, ...]]] = []
    for idx, v in enumerate(manifest.variants):
        why = _missing_features(v, hw.cpu)
        fit = 0
        if why is None and v.kind == "cuda":
            why, fit = _judge_cuda(v, hw.gpu, visible, vis_note)
        score = (1 if v.kind == "cuda" else 0, fit, v.priority, v.x86_64_level or 0, len(v.features),
                 _max_sm(v), -idx)
        judged.append((v, why, score))

    usable = sorted(((v, s) for v, why, s in judged if why is None), key=lambda p: p[1], reverse=True)
    order = [v.name for v, _ in usable]
    error = None
    if forced is not None:
        order, error = _apply_force(forced, manifest, judged, usable, unsafe, env)
    elif not order:
        error = f"no build of {module} can run on this machine"

    best = order[0] if order else None
    cands: list[Candidate] = []
    for v, why, score in judged:
        if why is not None:
            reason = why
        elif v.name == best:
            reason = "chosen" + (f" (FATDISPATCH_FORCE={forced})" if forced else "") + ": " + _describe(v, score)
        elif v.name in order:
            reason = f"usable; ranked below {best} ({_describe(v, score)})"
        else:
            reason = f"usable, but FATDISPATCH_FORCE={forced} rules it out"
        if why is not None and v.name in order:
            reason = f"forced with FATDISPATCH_UNSAFE_FORCE although: {why}"
        cands.append(Candidate(variant=v, usable=why is None, reason=reason, score=score))
    rank = {name: i for i, name in enumerate(order)}
    cands.sort(key=lambda c: (rank.get(c.variant.name, len(rank)), not c.usable, [-x for x in c.score]))
    return Selection(module=module, candidates=tuple(cands), order=tuple(order), forced=forced, hardware=hw,
                     notes=tuple(notes), error=error)


def _max_sm(v: Variant) -> int:
    if v.cuda is None:
        return 0
    from ._manifest import parse_sm

    return max((parse_sm(t)[0] * 10 + parse_sm(t)[1] for t in v.cuda.sass + v.cuda.ptx), default=0)


def _describe(v: Variant, score: tuple[int, ...]) -> str:
    if v.kind == "cuda":
        return f"CUDA, {MATCH_NAMES.get(score[1], 'no fit')}, carries {_targets_text(v)}"
    level = f"x86-64-v{v.x86_64_level}" if v.x86_64_level else v.arch
    return f"CPU, {level}, priority {v.priority}"


def _apply_force(forced: str, manifest: Manifest, judged: list[tuple[Variant, str | None, tuple[int, ...]]],
                 usable: list[tuple[Variant, tuple[int, ...]]], unsafe: bool,
                 env: Mapping[str, str]) -> tuple[list[str], str | None]:
    module = manifest.module
    raw = env.get("FATDISPATCH_FORCE", "")
    token = ALIASES.get(forced, forced)
    names = {v.name.lower(): v for v in manifest.variants}
    if token == "cpu" or token == "cuda":
        order = [v.name for v, _ in usable if v.kind == token]
        if order:
            return order, None
        if unsafe:
            ranked = sorted((p for p in judged if p[0].kind == token), key=lambda p: p[2], reverse=True)
            if ranked:
                return [v.name for v, _, _ in ranked], None
        kinds = [f"{v.name}: {why}" for v, why, _ in judged if v.kind == token]
        detail = "; ".join(kinds) if kinds else f"{module} has no {token.upper()} build"
        return [], (f"FATDISPATCH_FORCE={raw} asks for a {token.upper()} build of {module}, but none can run here "
                    f"({detail})")
    if token == "baseline" and "baseline" not in names:
        cpus = [p for p in judged if p[0].kind == "cpu"]
        if cpus:
            token = min(cpus, key=lambda p: (p[0].x86_64_level or 0, len(p[0].features)))[0].name.lower()
    target = names.get(token)
    if target is None:
        valid = sorted({v.name for v in manifest.variants} | set(CATEGORIES))
        aliases = sorted(a for a, t in ALIASES.items() if t in names or t in CATEGORIES)
        raise ConfigError("FATDISPATCH_FORCE", raw,
                          f"{module} has no build {forced!r}; valid values: {', '.join(valid)}"
                          + (f" (aliases: {', '.join(aliases)})" if aliases else ""))
    why = next(w for v, w, _ in judged if v is target)
    if why is None or unsafe:
        return [target.name], None
    return [], (f"FATDISPATCH_FORCE={raw} asks for build {target.name!r} of {module}, but this machine cannot run "
                f"it: {why}. Unset FATDISPATCH_FORCE, or set FATDISPATCH_UNSAFE_FORCE=1 to load it anyway "
                f"(it may crash with an illegal instruction)")


def format_selection(sel: Selection) -> str:
    """A human-readable account of the decision, one line per build."""
    lines = []
    if sel.error:
        lines.append(f"{sel.module}: nothing can be loaded: {sel.error}")
    else:
        lines.append(f"{sel.module} -> {sel.chosen}")
    for c in sel.candidates:
        mark = "*" if c.variant.name == sel.chosen else ("+" if c.usable else "-")
        lines.append(f"  {mark} {c.variant.name:<16} {c.reason}")
    for n in sel.notes:
        lines.append(f"  note: {n}")
    return "\n".join(lines)


def describe_hardware(hw: Hardware) -> dict[str, Any]:
    """The hardware as plain JSON-ready data (``report --json``)."""
    cpu = hw.cpu
    gpus = []
    for g in hw.gpu.devices:
        gpus.append({"index": g.index, "name": g.name, "uuid": g.uuid,
                     "compute_capability": f"{g.compute_capability[0]}.{g.compute_capability[1]}",
                     "cuda_driver_version": (f"{hw.gpu.cuda_driver_version[0]}.{hw.gpu.cuda_driver_version[1]}"
                                             if hw.gpu.cuda_driver_version else None),
                     "mig_uuids": list(g.mig_uuids)})
    return {"cpu": {"arch": cpu.arch, "features": sorted(cpu.features), "x86_64_level": cpu.x86_64_level,
                    "vendor": cpu.vendor, "source": cpu.source, "notes": list(cpu.notes)},
            "gpus": gpus,
            "gpu_driver": {"driver_version": hw.gpu.driver_version or None,
                           "cuda_driver_version": (".".join(map(str, hw.gpu.cuda_driver_version))
                                                   if hw.gpu.cuda_driver_version else None),
                           "libcuda": hw.gpu.libcuda, "source": hw.gpu.source, "reason": hw.gpu.reason}}
