"""fatdispatch's CMake package (``find_package(fatdispatch)``): ``fatdispatchConfig.cmake`` and ``fatdispatch.cmake``.

``python -m fatdispatch --cmake-dir`` prints this folder; scikit-build-core finds it through the ``cmake.root``
entry point (and through site-packages, which it adds to ``CMAKE_PREFIX_PATH``).
"""
