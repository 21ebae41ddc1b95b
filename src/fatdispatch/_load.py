"""The full path: what runs when the pick cache does not answer, and the public API around it.

Read the manifest, probe the hardware (once per process), ask the pure :func:`~fatdispatch._select.select`
for a ranked order, and try each build under the stable name.  Nothing is loaded before the decision; every
file passes :func:`_fatdispatch.check_build` first; a build that fails to load is recorded and the next one
tried.  A clean load of the first choice of a decision the environment did not shape is remembered in the
pick cache (:func:`_fatdispatch.remember_pick`), which answers later imports.

Called by :func:`_fatdispatch.create_module` (the import path's loader) and by ``explain``/``report``.
"""

import os
import sys

import _fatdispatch

from ._cpu import probe_cpu, probe_raw
from ._env import BUILD_VARIABLES, KNOWN_VARIABLES, boolean, cache_allowed, cpu_only_force, force_for, unknown_variables
from ._manifest import MANIFEST_NAME, VARIANTS_SUFFIX, read_manifest
from ._privfile import open_private_dir, prune_private, remove_everywhere, write_private
from ._records import NO_GPU_PROBE, Hardware, LoadRecord, Manifest, Selection, Variant, no_gpus
from ._select import effective_hardware, format_selection, select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Iterable, Mapping

_records: "dict[str, LoadRecord]" = {}
_said: "set[str]" = set()  # messages said once per process


# ============================================================================
# The public API besides install() (exported by :mod:`fatdispatch`)
# ============================================================================


def explain(module: "str", env: "Mapping[str, str] | None" = None) -> "Selection":
    """The ranked decision for a registered fat module, with a reason for every build.  Loads nothing."""
    folder = _fatdispatch.registry.get(module)
    if folder is None:
        from ._errors import FatDispatchError  # the error classes are loaded where one is raised

        raise FatDispatchError(f"{module} is not a registered fat module (import its package first); "
                               f"registered: {', '.join(sorted(_fatdispatch.registry)) or 'none'}")
    return decide(module, folder, env)


def loaded(module: "str") -> "LoadRecord | None":
    """What happened when ``module`` was imported (the build bound and every failed attempt), or None."""
    return record(module)


def hardware(env: "Mapping[str, str] | None" = None, gpu: "bool" = True) -> "Hardware":
    """The probed hardware (CPU always; NVIDIA GPUs when ``gpu``), with ``FATDISPATCH_DISABLE`` applied."""
    env = os.environ if env is None else env
    if gpu:
        from ._gpu import probe_gpus

        g = probe_gpus(env)
    else:
        g = NO_GPU_PROBE
    return effective_hardware(Hardware(cpu=probe_cpu(), gpu=g), env)


def fat_modules(paths: "Iterable[str] | None" = None) -> "dict[str, str]":
    """Installed fat modules found on ``paths`` (default ``sys.path``): module name -> variants folder."""
    from ._discover import discover

    return discover(sys.path if paths is None else paths)


def registered() -> "dict[str, str]":
    return dict(_fatdispatch.registry)


def install_slowly(package: "str", modules: "Iterable[str] | None") -> "None":
    """:func:`_fatdispatch.install` for the rarer cases: finding the modules, and every error."""
    if isinstance(modules, str):
        raise TypeError(f"install({package!r}, {modules!r}): modules is a list of names, such as [{modules!r}]")
    pkg = sys.modules.get(package)
    paths = list(getattr(pkg, "__path__", None) or [])
    if not paths:
        from ._errors import FatDispatchError

        raise FatDispatchError(f"fatdispatch.install({package!r}): {package} is not an imported package; "
                               "call install(__name__) from the package's __init__.py")
    if modules is None:  # every <name>.variants folder
        found: "list[str]" = []
        for p in paths:
            try:
                found.extend(n[: -len(VARIANTS_SUFFIX)] for n in os.listdir(p) if n.endswith(VARIANTS_SUFFIX))
            except OSError:
                continue
        if not found:
            from ._errors import FatDispatchError

            raise FatDispatchError(f"fatdispatch.install({package!r}): no <module>{VARIANTS_SUFFIX} folder in "
                                   f"{', '.join(paths)}{_where_builds_went(paths)}", name=package)
        modules = sorted(set(found))
    names = list(modules)
    located: "list[tuple[str, str]]" = []
    for mod in names:
        folder = next((os.path.join(p, mod + VARIANTS_SUFFIX) for p in paths
                       if os.path.isdir(os.path.join(p, mod + VARIANTS_SUFFIX))), None)
        if folder is None:
            from ._errors import FatDispatchError

            raise FatDispatchError(f"fatdispatch.install({package!r}): no folder {mod}{VARIANTS_SUFFIX} in "
                                   f"{', '.join(paths)}{_where_builds_went(paths)}", name=f"{package}.{mod}")
        located.append((f"{package}.{mod}", folder))
    for fullname, folder in located:  # all or none
        _fatdispatch.register(fullname, folder)


def _where_builds_went(paths: "list[str]") -> "str":
    """Why a package has no variants folder, as far as can be told: a zip archive, a frozen application that
    did not carry the builds, or a build made without fatdispatch."""
    for p in paths:
        head = p
        while head and not os.path.exists(head):
            parent = os.path.dirname(head)
            if parent == head:
                break
            head = parent
        if head != p and os.path.isfile(head):
            return (f": the package is inside the archive {head}, and compiled builds cannot be loaded from an "
                    "archive; install it as files (pip install, or unzip the archive)")
    if getattr(sys, "frozen", False) or "__compiled__" in globals():
        return ("; this frozen application did not carry the package's builds: with PyInstaller install "
                "fatdispatch in the build environment (its hook collects them), with Nuitka add "
                "--include-raw-dir=<site-packages>/<package>/<module>.variants=<package>/<module>.variants")
    return "; the package was built without its variants (rebuild it with fatdispatch's build_ext)"


# ============================================================================
# Deciding
# ============================================================================


def record(fullname: "str") -> "LoadRecord | None":
    """The load record of ``fullname``; for a module bound from the pick cache, built now (the same decision)."""
    rec = _records.get(fullname)
    hit = _fatdispatch.hits.get(fullname)
    if rec is None and hit is not None:
        sel = decide(fullname, _fatdispatch.registry[fullname], os.environ)
        rec = _records[fullname] = LoadRecord(module=fullname, variant=hit[0], path=hit[1], selection=sel,
                                              attempts=())
    return rec


def hardware_for(manifest: "Manifest", env: "Mapping[str, str]") -> "Hardware":
    """Probe what this manifest needs: the CPU always; NVIDIA GPUs only if a CUDA build could be chosen."""
    gpu = NO_GPU_PROBE
    if manifest.has_cuda:
        forced = force_for(manifest.module, env, _fatdispatch.registry)
        if not cpu_only_force(forced, (v.name for v in manifest.variants if v.kind == "cpu")):
            present, why = _fatdispatch.driver_present()  # no driver: the GPU probe is not even imported
            if present:
                from ._gpu import probe_gpus

                gpu = probe_gpus(env)
            else:
                gpu = no_gpus(why)
    return Hardware(cpu=probe_cpu(), gpu=gpu)


def decide(fullname: "str", variants_dir: "str", env: "Mapping[str, str] | None" = None) -> "Selection":
    """Read the manifest, probe, and select: everything short of loading."""
    env = os.environ if env is None else env
    manifest = read_manifest(variants_dir)
    if manifest.module != fullname:
        from ._errors import ManifestError

        raise ManifestError(manifest.path, "module",
                            f"describes {manifest.module!r} but was found for {fullname!r}: the build is misplaced")
    return select(manifest, hardware_for(manifest, env), env, _fatdispatch.registry)


def _report_decision(selection: "Selection", env: "Mapping[str, str]") -> "None":
    if any(k.startswith("FATDISPATCH_") and k not in KNOWN_VARIABLES + BUILD_VARIABLES for k in env):
        for msg in unknown_variables(env):
            sys.stderr.write(msg + "\n")
    verbose = boolean(env, "FATDISPATCH_VERBOSE")
    logging = sys.modules.get("logging")  # log only where the application already uses logging
    if not verbose and logging is None:
        return
    text = format_selection(selection)
    if verbose:
        sys.stderr.write("".join(f"fatdispatch: {line}\n" for line in text.splitlines()))
    if logging is not None:
        logging.getLogger("fatdispatch").debug("%s", text)


def log_decision(fullname: str) -> None:
    """Log the decision behind a module bound from the pick cache (only where DEBUG logging is on)."""
    rec = record(fullname)
    if rec is not None:
        _report_decision(rec.selection, {})


def _say_once(env: "Mapping[str, str]", message: "str") -> "None":
    if message not in _said and boolean(env, "FATDISPATCH_VERBOSE"):
        _said.add(message)
        sys.stderr.write(f"fatdispatch: {message}\n")


# ============================================================================
# Loading
# ============================================================================


def _uses_amx(variant: "Variant") -> "bool":
    """A build that needs AMX tiles, which Linux grants only on request."""
    return any(f.startswith("amx") for f in variant.features)


def confinement_roots(variants_dir: "str") -> "tuple[str, ...]":
    """Where a build of ``variants_dir`` may really lie: inside the folder itself, or, for an install made of
    symlinks (uv's symlink link mode, stow ``--no-folding``, Bazel runfiles, Spack views), inside the folder
    that really holds the manifest: the same installed tree.  A build folder swapped for a symlink out of
    the package lies in neither.  One walk of the path where the manifest is no symlink (the usual install):
    then it really lies in the folder itself."""
    real = os.path.realpath(variants_dir)
    manifest = os.path.join(real, MANIFEST_NAME)
    if not os.path.islink(manifest):
        return (real,)
    manifest_root = os.path.dirname(os.path.realpath(manifest))
    return (real,) if manifest_root == real else (real, manifest_root)


def resolve_file(variants_dir: "str", variant: "Variant") -> "tuple[str | None, str]":
    """The build's file as installed (trying every extension suffix), or None and why not."""
    base = os.path.join(variants_dir, *variant.file.split("/"))
    tried = []
    for suffix in _fatdispatch.EXTENSION_SUFFIXES:
        candidate = base + suffix
        if os.path.isfile(candidate):
            return candidate, ""
        tried.append(os.path.basename(candidate))
    return None, f"file missing: {os.path.dirname(base)}/{{{','.join(tried)}}}"


def checked_file(variants_dir: "str", roots: "tuple[str, ...]", variant: "Variant") -> "tuple[str, str, str, str | None]":
    """The build's file and the checks every load applies: (path, identity, real path, None), or why not
    in the last place (a missing file, or :func:`_fatdispatch.check_build`'s refusal)."""
    path, why = resolve_file(variants_dir, variant)
    if path is None:
        return "", "", "", why
    ident, real, refused = _fatdispatch.check_build(path, roots, variant.arch)
    return path, ident, real, refused


def check_chosen(selection: "Selection", variants_dir: "str") -> "dict[str, str]":
    """Every build of ``selection.order`` that would be refused at load, with why (what ``report`` shows):
    the same file checks an import applies."""
    roots = confinement_roots(variants_dir)
    by_name = {c.variant.name: c.variant for c in selection.candidates}
    problems = {}
    for build in selection.order:
        why = checked_file(variants_dir, roots, by_name[build])[3]
        if why is not None:
            problems[build] = why
    return problems


def load(spec: "Any", variants_dir: "str") -> "ModuleType":
    """Decide and load ``spec.name`` the full way (:func:`_fatdispatch.create_module` calls this on a miss)."""
    env = os.environ
    selection = decide(spec.name, variants_dir, env)
    _report_decision(selection, env)
    return load_selection(spec, variants_dir, selection, env)


def load_selection(spec: "Any", variants_dir: "str", sel: "Selection", env: "Mapping[str, str]") -> "ModuleType":
    """Load the first build of ``sel.order`` that loads, under the stable name; remember a clean first choice."""
    name = spec.name
    attempts: "list[tuple[str, str]]" = []
    if sel.error:
        _records[name] = LoadRecord(module=name, variant=None, path=None, selection=sel, attempts=())
        from ._errors import NoUsableBuildError

        raise NoUsableBuildError(f"fatdispatch: cannot import {name}: {sel.error}", name=name)
    roots = confinement_roots(variants_dir)
    by_name = {c.variant.name: c.variant for c in sel.candidates}
    for build in sel.order:
        variant = by_name[build]
        path, ident, real, refused = checked_file(variants_dir, roots, variant)
        if refused is not None:
            attempts.append((build, refused))
            continue
        try:
            module = _fatdispatch.load_extension(name, path, _uses_amx(variant))
        except BaseException as exc:  # noqa: BLE001 - any failure of one build means: try the next
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            attempts.append((build, f"{type(exc).__name__}: {exc}"))
            if variant.kind == "cuda" and sel.hardware.gpu.source == "cache":
                from ._gpu import drop_cache

                drop_cache(env)  # the cached GPU facts may be stale: ask NVML next time
            continue
        spec.origin = path
        spec.has_location = True
        module.__fatdispatch_variant__ = build  # type: ignore[attr-defined]
        _records[name] = LoadRecord(module=name, variant=build, path=path, selection=sel, attempts=tuple(attempts))
        if attempts:
            _warn_fallback(name, build, attempts)
            if cache_allowed(env):
                forget_pick(variants_dir, env)
        else:
            remember(variants_dir, sel, variant, path, real, ident, env)
        return module
    _records[name] = LoadRecord(module=name, variant=None, path=None, selection=sel, attempts=tuple(attempts))
    lines = "\n".join(f"  {b}: {why}" for b, why in attempts)
    from ._errors import NoUsableBuildError

    raise NoUsableBuildError(f"fatdispatch: no build of {name} could be loaded; tried:\n{lines}",
                             name=name, attempts=tuple(attempts))


def remember(variants_dir: "str", sel: "Selection", variant: "Variant", path: "str", real: "str", ident: "str",
             env: "Mapping[str, str]") -> "None":
    """Write the pick of a clean load to the pick cache, where it can be read back: Linux x86-64, a decision
    no ``FATDISPATCH_*`` variable shaped, CPU facts from CPUID, the cache allowed.  A folder that cannot be
    used is said once under ``FATDISPATCH_VERBOSE``; it only means no cache."""
    if not (_fatdispatch._PICKS_HERE and sel.cacheable and sel.hardware.cpu.source == "cpuid"
            and cache_allowed(env)):
        return
    raw = probe_raw()  # the words this decision was made from: no second round of CPUID
    if raw is None:
        return
    cuda = any(c.variant.kind == "cuda" for c in sel.candidates)
    try:
        key = _fatdispatch.pick_key(variants_dir, raw, cuda, env)
        entry = _fatdispatch.pick_entry(variants_dir, key, variant.name, path, real, ident, variant.arch,
                                        variant.features, _uses_amx(variant), cuda)
        if entry is not None:
            remember_pick(variants_dir, entry, env)
    except (OSError, ValueError) as exc:  # ValueError: what the pick rests on does not fit a key
        _say_once(env, f"the pick cache cannot be written, so every import decides afresh: {exc}")


def _is_pick_name(name: "str") -> "bool":
    head, sep, tail = name.partition("-")
    return bool(sep and head and tail) and all(c in "0123456789abcdef" for c in head + tail)


def remember_pick(variants_dir: "str", entry: "bytes", env: "Mapping[str, str]") -> "None":
    """Write a pick cache entry and keep the newest :data:`_fatdispatch.PICKS_KEEP`; :class:`OSError` where no
    private folder can be used or written."""
    name = _fatdispatch.pick_name(variants_dir)
    dir_fd, _ = open_private_dir(env, _fatdispatch.PICKS_DIR, True)
    try:
        write_private(dir_fd, name, entry)
        prune_private(dir_fd, _is_pick_name, _fatdispatch.PICKS_KEEP)
    finally:
        os.close(dir_fd)


def forget_pick(variants_dir: "str", env: "Mapping[str, str]") -> "None":
    """Drop the entry of ``variants_dir`` (its pick did not load cleanly) from every cache folder holding one:
    the import path takes the first entry it finds, in whichever base."""
    try:
        name = _fatdispatch.pick_name(variants_dir)
    except OSError:
        return
    remove_everywhere(env, _fatdispatch.PICKS_DIR, name)


def _warn_fallback(name: "str", build: "str", attempts: "list[tuple[str, str]]") -> "None":
    text = "; ".join(f"{b}: {why}" for b, why in attempts)
    msg = f"fatdispatch: {name} fell back to {build} after: {text}"
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("fatdispatch").warning("%s", msg)
        return
    import warnings

    try:
        warnings.warn(msg, RuntimeWarning, 3)
    except RuntimeWarning:  # -W error: the import worked, so say it rather than fail it
        sys.stderr.write(msg + "\n")


__all__ = ["explain", "loaded", "hardware", "fat_modules", "registered", "install_slowly", "decide", "load",
           "record", "resolve_file", "check_chosen", "MANIFEST_NAME"]
