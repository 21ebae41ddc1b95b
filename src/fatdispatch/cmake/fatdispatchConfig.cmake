# fatdispatch's CMake package: find_package(fatdispatch CONFIG REQUIRED) gives fatdispatch_add_module().
# Found by scikit-build-core through fatdispatch's cmake.root entry point, or with
#   -Dfatdispatch_DIR="$(python -m fatdispatch --cmake-dir)"
include("${CMAKE_CURRENT_LIST_DIR}/fatdispatch.cmake")
set(fatdispatch_FOUND TRUE)
