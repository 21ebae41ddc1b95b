"""fatdispatch's Meson helper: ``meson.build`` (the driver) and ``build.meson`` (one build of a fat module).

A Meson project cannot read files outside its source tree, so ``python -m fatdispatch.build meson-files`` copies
them into the project (``fatdispatch-meson/`` and one folder per build); ``python -m fatdispatch --meson-dir``
prints this folder.
"""
