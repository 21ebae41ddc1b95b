"""The decision: a pure function of (manifest, hardware, environment).

:func:`select` ranks every build of a manifest and gives every build that was not chosen a reason.  It reads
nothing and probes nothing: tests hand it recorded machines and plain dicts for the environment.

Ranking, best first:

1. usable CUDA builds (only when a usable NVIDIA GPU is visible): exact SASS for every visible GPU, then
   compatible SASS, then PTX (JIT); then the packager's priority; then the highest SM;
2. usable CPU builds: the packager's ``priority`` (default 0), then the x86-64 level, then the number of
   required features.

The environment's rules (``FATDISPATCH_FORCE``, ``FATDISPATCH_DISABLE``, ``FATDISPATCH_UNSAFE_FORCE``) are
:mod:`fatdispatch._env`'s; NVIDIA's are :mod:`fatdispatch._cuda`'s.
"""

from ._cpu import without
from ._cuda import exact_rank, parse_target, runtime_ok, sm_fit, visible_gpus
from ._env import ALIASES, CATEGORIES, boolean, disabled_features, force_for, shapes_decision
from ._records import CPU, GPU, Candidate, CudaTargets, GPUs, Hardware, Manifest, Selection, Variant

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Mapping


def effective_hardware(hw: "Hardware", env: "Mapping[str, str]") -> "Hardware":
    """``hw`` with ``FATDISPATCH_DISABLE`` applied."""
    if "FATDISPATCH_DISABLE" not in env:
        return hw
    from ._tables import feature_table  # only for FATDISPATCH_DISABLE

    table = feature_table()
    if hw.cpu.arch == "aarch64":
        known = set(table["aarch64"]["hwcap"]) | set(table["aarch64"]["hwcap2"])
    else:
        known = set(table["x86"]["bits"])
    off = disabled_features(env, known)
    if not off:
        return hw
    return hw.replace(cpu=without(hw.cpu, off, "FATDISPATCH_DISABLE", table))


def _missing_features(v: "Variant", cpu: "CPU") -> "str | None":
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


def _judge_cuda(v: "Variant", gpu: "GPUs", visible: "tuple[GPU, ...]", vis_note: "str | None") -> "tuple[str | None, int]":
    assert v.cuda is not None
    if gpu.reason is not None:
        return f"no usable NVIDIA GPU: {gpu.reason}", 0
    if not visible:
        return f"no usable NVIDIA GPU: {vis_note or 'none visible'}", 0
    fits = []
    for g in visible:
        fit = sm_fit(v.cuda.sass, v.cuda.ptx, g.compute_capability)
        if fit == 0:
            cc = g.compute_capability
            return (f"no code for GPU {g.index} ({g.name}, compute capability {cc[0]}.{cc[1]}): "
                    f"the build carries {targets_text(v.cuda)}"), 0
        fits.append(fit)
    ok, why = runtime_ok(v.cuda.runtime, gpu.cuda_driver_version, min(fits) >= 2, bool(v.cuda.ptx), gpu.driver_version)
    return (None, min(fits)) if ok else (why, 0)


MATCH_NAMES = {3: "exact SASS", 2: "compatible SASS", 1: "PTX (JIT-compiled at first load)"}


def targets_text(cuda: "CudaTargets") -> str:
    return ", ".join([f"sm_{t}" for t in cuda.sass] + [f"compute_{t} (PTX)" for t in cuda.ptx])


def max_sm(cuda: "CudaTargets | None") -> int:
    if cuda is None:
        return 0
    return max((major * 10 + minor for major, minor, _ in map(parse_target, cuda.sass + cuda.ptx)), default=0)


def select(manifest: "Manifest", hardware: "Hardware", env: "Mapping[str, str]", registered: "Iterable[str]" = ()) -> "Selection":
    """Rank every build of ``manifest`` for ``hardware`` under ``env``.

    Pure.  Raises :class:`ConfigError` only for malformed ``FATDISPATCH_*``
    values; every other problem is recorded in the returned selection.
    """
    module = manifest.module
    hw = effective_hardware(hardware, env)
    forced = force_for(module, env, registered)
    unsafe = boolean(env, "FATDISPATCH_UNSAFE_FORCE")
    notes: "list[str]" = []
    if hw.gpu.devices:
        visible, vis_note = visible_gpus(hw.gpu.devices, env)
    else:
        visible, vis_note = (), None
    if vis_note:
        notes.append(vis_note)

    judged: "list[tuple[Variant, str | None, tuple[int, ...]]]" = []
    for idx, v in enumerate(manifest.variants):
        why = _missing_features(v, hw.cpu)
        fit = 0
        if why is None and v.kind == "cuda":
            why, fit = _judge_cuda(v, hw.gpu, visible, vis_note)
        exact = 0
        if fit == 3 and v.cuda is not None:  # on the exact capability a > f > plain SASS
            exact = min(exact_rank(v.cuda.sass, g.compute_capability) for g in visible)
        score: "tuple[int, ...]" = (1 if v.kind == "cuda" else 0, fit, v.priority, exact, v.x86_64_level or 0,
                                    len(v.features), max_sm(v.cuda), -idx)
        judged.append((v, why, score))

    usable = sorted(((v, s) for v, why, s in judged if why is None), key=lambda p: p[1], reverse=True)
    order = [v.name for v, _ in usable]
    error = None
    if forced is not None:
        order, error = _apply_force(forced, manifest, judged, usable, unsafe, env)
    elif not order:
        error = f"no build of {module} can run on this machine"

    best = order[0] if order else None
    cands: "list[Candidate]" = []
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
                     notes=tuple(notes), error=error,
                     cacheable=not shapes_decision(env))


def _describe(v: "Variant", score: "tuple[int, ...]") -> "str":
    if v.kind == "cuda" and v.cuda is not None:
        return f"CUDA, {MATCH_NAMES.get(score[1], 'no fit')}, carries {targets_text(v.cuda)}"
    level = f"x86-64-v{v.x86_64_level}" if v.x86_64_level else v.arch
    return f"CPU, {level}, priority {v.priority}"


def _apply_force(forced: "str", manifest: "Manifest", judged: "list[tuple[Variant, str | None, tuple[int, ...]]]",
                 usable: "list[tuple[Variant, tuple[int, ...]]]", unsafe: "bool",
                 env: "Mapping[str, str]") -> "tuple[list[str], str | None]":
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
        from ._errors import ConfigError

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
