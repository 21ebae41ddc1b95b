# fatdispatch_add_module: build one extension module once per variant and dispatch at import.
#
#   find_package(Python COMPONENTS Interpreter Development.Module REQUIRED)
#   find_package(fatdispatch CONFIG REQUIRED)
#   fatdispatch_add_module(mypkg._core
#     SOURCES src/mypkg/_core.c
#     VARIANTS baseline x86-64-v2 x86-64-v3 x86-64-v4     # catalog names (default: every variant of the arch)
#     CUDA_SOURCES src/mypkg/_core.cu                     # needs project(... LANGUAGES C CUDA)
#     CUDA_TARGETS sm_80 sm_90 compute_75                 # one CUDA build each; sm_80+sm_86 makes one build of two
#     EXTRA_FLAGS -O2)                                    # for C/C++ sources of every build
#
# Every build is its own CMake target (its own object files: parallel Ninja builds never mix variants), compiled
# with the catalog's flags for the compiler in use, which `python -m fatdispatch.build plan` reads from the
# catalog installed with fatdispatch at configure time.  Each is installed as
# <pkg>/<mod>.variants/<build>/<mod><EXT_SUFFIX>, and the manifest (<pkg>/<mod>.variants/manifest.json) is
# written by fatdispatch's own manifest writer (`python -m fatdispatch.build manifest`, a build step that checks
# every built file).  The package's __init__.py needs one line (see README, "CMake and Meson"):
#   __import__("_fatdispatch").install(__name__, ["_core"])  # fatdispatch: bind the best build of each fat module
#
# Other arguments: CUDA_FLAGS (extra nvcc flags), CUDA_OPTIONAL (build without the CUDA builds where CUDA is not
# enabled, with a warning), PRIORITIES build=N..., INCLUDE_DIRECTORIES, COMPILE_DEFINITIONS, LINK_LIBRARIES (applied
# to every build), INSTALL_DIR (default: the module's package path, relative to the install prefix), TARGETS_VAR
# (a variable set to the list of targets).  FATDISPATCH_SKIP_CUDA=1 in the environment skips the CUDA builds.
include_guard(GLOBAL)

function(fatdispatch_add_module module)
  cmake_parse_arguments(PARSE_ARGV 1 FD "CUDA_OPTIONAL" "INSTALL_DIR;TARGETS_VAR"
    "SOURCES;VARIANTS;CUDA_SOURCES;CUDA_TARGETS;EXTRA_FLAGS;CUDA_FLAGS;PRIORITIES;INCLUDE_DIRECTORIES;COMPILE_DEFINITIONS;LINK_LIBRARIES")
  if(FD_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "fatdispatch_add_module(${module}): unknown arguments ${FD_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT FD_SOURCES)
    message(FATAL_ERROR "fatdispatch_add_module(${module}): SOURCES is required")
  endif()
  if(NOT COMMAND Python_add_library OR NOT Python_EXECUTABLE)
    message(FATAL_ERROR "fatdispatch_add_module(${module}): call "
      "find_package(Python COMPONENTS Interpreter Development.Module REQUIRED) first")
  endif()
  string(REGEX MATCH "[^.]+$" modname "${module}")
  string(REGEX REPLACE "\\.?[^.]+$" "" package "${module}")
  string(REPLACE "." "/" package_dir "${package}")
  if(NOT DEFINED FD_INSTALL_DIR)
    set(FD_INSTALL_DIR "${package_dir}")
  endif()
  if(FD_INSTALL_DIR STREQUAL "")
    set(variants_dest "${modname}.variants")
  else()
    set(variants_dest "${FD_INSTALL_DIR}/${modname}.variants")
  endif()

  # CUDA: CMake's CUDA language, enabled by the project (enable_language is file scope only)
  set(cuda_targets ${FD_CUDA_TARGETS})
  set(cuda_version "")
  if(cuda_targets)
    if(NOT FD_CUDA_SOURCES)
      message(FATAL_ERROR "fatdispatch_add_module(${module}): CUDA_TARGETS given but no CUDA_SOURCES")
    endif()
    if("$ENV{FATDISPATCH_SKIP_CUDA}" STREQUAL "1")
      message(WARNING "${module}: FATDISPATCH_SKIP_CUDA=1: building without its CUDA builds")
      set(cuda_targets "")
    elseif(NOT CMAKE_CUDA_COMPILER_LOADED)
      set(msg "${module}: CUDA is not enabled: add CUDA to project(... LANGUAGES C CUDA) or call "
              "enable_language(CUDA) (CMake needs nvcc: PATH, CUDACXX or -DCMAKE_CUDA_COMPILER)")
      if(FD_CUDA_OPTIONAL)
        message(WARNING ${msg} "; building without its CUDA builds")
        set(cuda_targets "")
      else()
        message(FATAL_ERROR ${msg} " (or pass CUDA_OPTIONAL, or set FATDISPATCH_SKIP_CUDA=1)")
      endif()
    else()
      set(cuda_version "${CMAKE_CUDA_COMPILER_VERSION}")
    endif()
  endif()

  if(CMAKE_C_COMPILER_LOADED)
    set(compiler_id "${CMAKE_C_COMPILER_ID}")
  elseif(CMAKE_CXX_COMPILER_LOADED)
    set(compiler_id "${CMAKE_CXX_COMPILER_ID}")
  else()
    message(FATAL_ERROR "fatdispatch_add_module(${module}): enable C or CXX in project()")
  endif()
  if(MSVC AND cuda_targets)
    message(FATAL_ERROR "${module}: CUDA builds with MSVC are not supported yet")
  endif()

  # the builds and their flags, from fatdispatch's catalog
  set(common_args --module "${module}" --arch "${CMAKE_SYSTEM_PROCESSOR}")
  if(FD_VARIANTS)
    list(APPEND common_args --variants ${FD_VARIANTS})
  endif()
  if(cuda_targets)
    list(APPEND common_args --cuda-targets ${cuda_targets} --cuda-version "${cuda_version}")
  endif()
  string(REGEX REPLACE "[^A-Za-z0-9_]" "_" tprefix "${module}")
  set(work "${CMAKE_CURRENT_BINARY_DIR}/fatdispatch-builds/${module}")  # not importable: python -m runs here
  set(vdir "${work}/${modname}.variants")
  file(MAKE_DIRECTORY "${work}")
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -m fatdispatch.build plan ${common_args} --compiler "${compiler_id}"
            --format cmake --output "${work}/plan.cmake"
    RESULT_VARIABLE rc ERROR_VARIABLE err OUTPUT_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "fatdispatch_add_module(${module}): ${Python_EXECUTABLE} -m fatdispatch.build plan "
      "failed (${rc}):\n${err}${out}\nIs fatdispatch in [build-system] requires (and importable by that Python)?")
  endif()
  include("${work}/plan.cmake")

  set(targets "")
  set(file_args "")
  foreach(build IN LISTS FATDISPATCH_PLAN_BUILDS)
    set(tgt "${tprefix}-${build}")
    set(kind "${FATDISPATCH_PLAN_KIND_${build}}")
    set(srcs ${FD_SOURCES})
    if(kind STREQUAL "cuda")
      list(APPEND srcs ${FD_CUDA_SOURCES})
    endif()
    Python_add_library(${tgt} MODULE WITH_SOABI ${srcs})
    set_target_properties(${tgt} PROPERTIES OUTPUT_NAME "${modname}" PREFIX ""
      LIBRARY_OUTPUT_DIRECTORY "${vdir}/${build}")
    foreach(cfg IN ITEMS DEBUG RELEASE RELWITHDEBINFO MINSIZEREL)
      set_target_properties(${tgt} PROPERTIES LIBRARY_OUTPUT_DIRECTORY_${cfg} "${vdir}/${build}")
    endforeach()
    set(cflags ${FATDISPATCH_PLAN_CFLAGS_${build}} ${FD_EXTRA_FLAGS})
    if(cflags)
      target_compile_options(${tgt} PRIVATE "$<$<COMPILE_LANGUAGE:C,CXX>:${cflags}>")
    endif()
    target_compile_definitions(${tgt} PRIVATE "FATDISPATCH_VARIANT=\"${build}\"" ${FD_COMPILE_DEFINITIONS})
    if(FD_INCLUDE_DIRECTORIES)
      target_include_directories(${tgt} PRIVATE ${FD_INCLUDE_DIRECTORIES})
    endif()
    if(FD_LINK_LIBRARIES)
      target_link_libraries(${tgt} PRIVATE ${FD_LINK_LIBRARIES})
    endif()
    if(kind STREQUAL "cuda")
      # the catalog's -gencode per SASS/PTX target instead of CUDA_ARCHITECTURES (which cannot say sm_90a on
      # every CMake), static cudart, and the driver library (libcuda) never linked: cudart dlopens it
      set_target_properties(${tgt} PROPERTIES CUDA_ARCHITECTURES OFF CUDA_RUNTIME_LIBRARY Static
        CUDA_SEPARABLE_COMPILATION OFF)
      target_compile_definitions(${tgt} PRIVATE FATDISPATCH_CUDA=1)
      set(nvflags ${FATDISPATCH_PLAN_NVCCFLAGS_${build}} ${FD_CUDA_FLAGS})
      target_compile_options(${tgt} PRIVATE "$<$<COMPILE_LANGUAGE:CUDA>:${nvflags}>")
    endif()
    install(TARGETS ${tgt} LIBRARY DESTINATION "${variants_dest}/${build}" RUNTIME DESTINATION "${variants_dest}/${build}")
    list(APPEND targets ${tgt})
    list(APPEND file_args --file "${build}=$<TARGET_FILE:${tgt}>")
  endforeach()

  # the manifest, through fatdispatch's writer, once every build is linked
  set(manifest_args ${common_args})
  foreach(p IN LISTS FD_PRIORITIES)
    list(APPEND manifest_args --priority "${p}")
  endforeach()
  add_custom_command(OUTPUT "${vdir}/manifest.json"
    COMMAND "${Python_EXECUTABLE}" -m fatdispatch.build manifest ${manifest_args} --out "${vdir}" ${file_args}
    DEPENDS ${targets} "${work}/plan.cmake"
    COMMENT "fatdispatch: writing the manifest of ${module}" VERBATIM)
  add_custom_target(${tprefix}-manifest ALL DEPENDS "${vdir}/manifest.json")
  install(FILES "${vdir}/manifest.json" DESTINATION "${variants_dest}")
  list(LENGTH targets n)
  message(STATUS "fatdispatch: ${module}: ${n} builds (${FATDISPATCH_PLAN_BUILDS}) -> ${variants_dest}/")
  if(FD_TARGETS_VAR)
    set(${FD_TARGETS_VAR} ${targets} PARENT_SCOPE)
  endif()
endfunction()
