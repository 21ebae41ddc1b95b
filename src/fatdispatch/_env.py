"""Every ``FATDISPATCH_*`` rule, as pure functions of an environment mapping.

``FATDISPATCH_FORCE``
    ``[module:]value[,...]``: a build name, ``cpu`` (best CPU build), ``cuda`` (best CUDA build) or
    ``baseline`` (the lowest CPU build).  Aliases: ``avx512`` = ``x86-64-v4``, ``avx2`` = ``x86-64-v3``,
    ``sse4`` = ``x86-64-v2``, ``v1`` .. ``v4``, ``gpu`` = ``cuda``.  Values are case-insensitive.
``FATDISPATCH_UNSAFE_FORCE=1``
    load a forced build even where this machine cannot run it.
``FATDISPATCH_DISABLE``
    comma-separated CPU feature names to treat as absent.
``FATDISPATCH_VERBOSE=1``
    print the decision to stderr.
``FATDISPATCH_GPU_CACHE=0``
    do not read or write the per-user GPU cache.
``FATDISPATCH_CACHE=0``
    do not read, write or delete any per-user cache (GPU facts, picks).

Setting any ``FATDISPATCH_*`` variable takes the full path (the pick cache never answers); a decision shaped
by FORCE, DISABLE or UNSAFE_FORCE is never remembered.  An unknown ``FATDISPATCH_*`` name is reported with a
"did you mean".
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Mapping

    from ._errors import ConfigError

KNOWN_VARIABLES = ("FATDISPATCH_FORCE", "FATDISPATCH_UNSAFE_FORCE", "FATDISPATCH_DISABLE", "FATDISPATCH_VERBOSE",
                   "FATDISPATCH_GPU_CACHE", "FATDISPATCH_CACHE")
# Build-time variables (fatdispatch.build): known, so an import does not call them misspelt.
BUILD_VARIABLES = ("FATDISPATCH_BUILD_JOBS", "FATDISPATCH_SKIP_CUDA", "FATDISPATCH_AUDIT")
SHAPING = ("FATDISPATCH_FORCE", "FATDISPATCH_DISABLE", "FATDISPATCH_UNSAFE_FORCE")  # never remembered
CATEGORIES = ("cpu", "cuda", "baseline")
ALIASES = {"avx512": "x86-64-v4", "avx2": "x86-64-v3", "sse4": "x86-64-v2", "v4": "x86-64-v4",
           "v3": "x86-64-v3", "v2": "x86-64-v2", "v1": "baseline", "x86-64-v1": "baseline", "gpu": "cuda"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _config_error(variable: "str", value: "str", problem: "str") -> "ConfigError":
    from ._errors import ConfigError  # the error classes are loaded when an error is raised

    return ConfigError(variable, value, problem)


def boolean(env: "Mapping[str, str]", name: "str", default: "bool" = False) -> "bool":
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _config_error(name, raw, "expected 1/true/yes/on or 0/false/no/off")


def cache_allowed(env: "Mapping[str, str]") -> "bool":
    """Whether any per-user cache may be read, written or deleted (``FATDISPATCH_CACHE``)."""
    return boolean(env, "FATDISPATCH_CACHE", True)


def gpu_cache_allowed(env: "Mapping[str, str]") -> "bool":
    return cache_allowed(env) and boolean(env, "FATDISPATCH_GPU_CACHE", True)


def shapes_decision(env: "Mapping[str, str]") -> "bool":
    """Whether the environment changes what would be chosen (such a decision is never remembered)."""
    return any(env.get(name, "").strip() for name in SHAPING)


def _force_items(env: "Mapping[str, str]") -> "list[tuple[str | None, str, str]]":
    """``FATDISPATCH_FORCE`` as (module or None, value, item) triples, values lower-cased."""
    raw = env.get("FATDISPATCH_FORCE")
    out: "list[tuple[str | None, str, str]]" = []
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        mod, sep, value = item.rpartition(":")
        value = value.strip().lower()
        if not value or "/" in value or "\\" in value:
            raise _config_error("FATDISPATCH_FORCE", raw or "",
                              f"{item!r} is not a build name (a value never names a file)")
        out.append((mod.strip() if sep else None, value, item))
    return out


def force_for(module: "str", env: "Mapping[str, str]", registered: "Iterable[str]" = ()) -> "str | None":
    """The ``FATDISPATCH_FORCE`` value that applies to ``module``, lower-cased, or None.

    A ``module:value`` item wins over a bare value; two different items for the same module are an error.
    An item naming a module of an imported fat package that has no such fat module (a typo such as
    ``fatdemo.core:baseline`` where ``fatdemo._core`` is registered) is an error too, with a "did you mean";
    ``registered`` is the names of the registered fat modules.
    """
    items = _force_items(env)
    if not items:
        return None
    raw = env.get("FATDISPATCH_FORCE", "")
    known = {m.lower(): m for m in registered} | {module.lower(): module}
    packages = {m.rpartition(".")[0] for m in known}
    generic = [v for m, v, _ in items if m is None]
    specific = [v for m, v, _ in items if m is not None and m.lower() == module.lower()]
    for m, _, item in items:
        if m is not None and m.lower() not in known and m.lower().rpartition(".")[0] in packages:
            close = did_you_mean(m.lower(), sorted(known))
            hint = f"; did you mean {known[close]}?" if close else ""
            raise _config_error("FATDISPATCH_FORCE", raw, f"{item!r} names no fat module{hint} (fat modules: "
                                                        f"{', '.join(sorted(known.values()))})")
    chosen = specific or generic
    if len(set(chosen)) > 1:
        raise _config_error("FATDISPATCH_FORCE", raw, f"asks for several builds of {module}: {', '.join(chosen)}")
    return chosen[0] if chosen else None


def cpu_only_force(forced: "str | None", cpu_builds: "Iterable[str]") -> "bool":
    """Whether a forced value rules every CUDA build out (then no GPU needs probing)."""
    if forced is None:
        return False
    token = ALIASES.get(forced, forced)
    return token in ("cpu", "baseline") or token in {b.lower() for b in cpu_builds}


def unknown_variables(env: "Mapping[str, str]") -> "list[str]":
    """Messages for ``FATDISPATCH_*`` names that fatdispatch does not know (typos)."""
    out = []
    for key in env:
        if key.upper().startswith("FATDISPATCH_") and key not in KNOWN_VARIABLES + BUILD_VARIABLES:
            close = did_you_mean(key.upper(), KNOWN_VARIABLES)
            hint = f"; did you mean {close}?" if close else f"; known: {', '.join(KNOWN_VARIABLES)}"
            out.append(f"fatdispatch: ignoring unknown environment variable {key}{hint}")
    return out


def did_you_mean(word: "str", options: "Iterable[str]") -> "str | None":
    """The option sharing the most characters in order with ``word`` (a cheap ratio, no :mod:`difflib`)."""
    best, best_score = None, 0.0
    for opt in options:
        prev = [0] * (len(opt) + 1)  # longest common subsequence
        for ch in word:
            cur = [0]
            for j, oc in enumerate(opt):
                cur.append(prev[j] + 1 if ch == oc else max(prev[j + 1], cur[j]))
            prev = cur
        score = 2.0 * prev[-1] / (len(word) + len(opt))
        if score > best_score:
            best, best_score = opt, score
    return best if best_score >= 0.75 else None


def disabled_features(env: "Mapping[str, str]", known: "Iterable[str]") -> "frozenset[str]":
    """``FATDISPATCH_DISABLE`` as feature names; an unknown name is an error with a "did you mean"."""
    raw = env.get("FATDISPATCH_DISABLE")
    if raw is None:
        return frozenset()
    known = sorted(set(known))
    names = [n.strip().lower() for n in raw.replace(" ", ",").split(",")]
    names = [n for n in names if n]
    bad = [n for n in names if n not in known]
    if bad:
        close = did_you_mean(bad[0], known)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise _config_error("FATDISPATCH_DISABLE", raw,
                          f"unknown CPU feature {bad[0]!r}{hint}; known features: {', '.join(known)}")
    return frozenset(names)
