# The Python package (python/qpipe): its cffi extension is built into
# build/python/qpipe against this build's libqpipe.so, and the tests under
# python/tests run with python3 -m unittest from the source tree
# (PYTHONPATH: python/tests, python, build/python). Label "python".
#
# Sanitizer builds run them too: python3 is not an ASan build, so the ASan
# (and UBSan) runtime that the instrumented libqpipe needs is LD_PRELOADed,
# and leak detection is off for these tests only (it would report
# CPython's own allocations, alive at exit by design); the C tests check
# the library for leaks. A ThreadSanitizer build skips them (TSan cannot
# be preloaded into an uninstrumented interpreter).
if(QP_SANITIZER MATCHES "thread")
  message(STATUS "qpipe: Python tests skipped in a ThreadSanitizer build")
  return()
endif()

find_program(QP_PYTHON3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(NOT QP_PYTHON3)
  find_program(QP_PYTHON3 python3)
endif()
if(NOT QP_PYTHON3)
  message(STATUS "qpipe: no python3, Python package and tests not built")
  return()
endif()

# Without cffi or msgpack (scripts/deps.sh build installs them) the
# extension cannot be built: one test says so and is reported skipped.
execute_process(COMMAND ${QP_PYTHON3} -c "import cffi, msgpack"
  RESULT_VARIABLE qp_py_missing OUTPUT_QUIET ERROR_QUIET)
if(qp_py_missing)
  message(STATUS "qpipe: python3-cffi or python3-msgpack missing: "
                 "Python package not built, its tests skipped")
  add_test(NAME py_missing_deps COMMAND sh -c
    "echo 'python3-cffi or python3-msgpack is missing (scripts/deps.sh build installs them)'; exit 77")
  set_tests_properties(py_missing_deps PROPERTIES SKIP_RETURN_CODE 77
    LABELS python)
  return()
endif()

set(QP_PY_OUT ${CMAKE_BINARY_DIR}/python)
set(QP_PY_STAMP ${QP_PY_OUT}/qpipe/.built)
add_custom_command(
  OUTPUT ${QP_PY_STAMP}
  COMMAND ${CMAKE_COMMAND} -E env QPIPE_BUILD_DIR=${CMAKE_BINARY_DIR}
          ${QP_PYTHON3} ${CMAKE_SOURCE_DIR}/python/qpipe/_build.py ${QP_PY_OUT}
  COMMAND ${CMAKE_COMMAND} -E touch ${QP_PY_STAMP}
  DEPENDS qpipe ${CMAKE_SOURCE_DIR}/python/qpipe/_build.py
          ${CMAKE_SOURCE_DIR}/lib/include/qpipe.h
  COMMENT "Building the qpipe Python extension (cffi)")
add_custom_target(qpipe_python ALL DEPENDS ${QP_PY_STAMP})

set(QP_PY_ENV
  "PYTHONPATH=${CMAKE_SOURCE_DIR}/python/tests:${CMAKE_SOURCE_DIR}/python:${QP_PY_OUT}"
  "QP_SOURCE_DIR=${CMAKE_SOURCE_DIR}" "QP_BUILD_DIR=${CMAKE_BINARY_DIR}"
  "PYTHONDONTWRITEBYTECODE=1")
if(QP_SANITIZER MATCHES "address")
  set(qp_preload "")
  foreach(rt asan ubsan)
    if(rt STREQUAL "asan" OR QP_SANITIZER MATCHES "undefined")
      execute_process(COMMAND ${CMAKE_C_COMPILER} -print-file-name=lib${rt}.so
        OUTPUT_VARIABLE qp_rt OUTPUT_STRIP_TRAILING_WHITESPACE)
      list(APPEND qp_preload ${qp_rt})
    endif()
  endforeach()
  string(REPLACE ";" ":" qp_preload "${qp_preload}")
  list(APPEND QP_PY_ENV "LD_PRELOAD=${qp_preload}"
    "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0")
endif()
file(GLOB QP_PY_TESTS CONFIGURE_DEPENDS
  ${CMAKE_SOURCE_DIR}/python/tests/test_*.py)
foreach(src ${QP_PY_TESTS})
  get_filename_component(mod ${src} NAME_WE)
  add_test(NAME py_${mod}
    COMMAND ${QP_PYTHON3} -m unittest -v ${mod}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/python/tests)
  set_tests_properties(py_${mod} PROPERTIES LABELS python TIMEOUT 600
    ENVIRONMENT "${QP_PY_ENV}")
endforeach()

# The package across hosts (network namespaces; skipped, exit 77, where
# they cannot be made).
add_test(NAME py_netns COMMAND bash ${CMAKE_SOURCE_DIR}/tests/py_netns.sh)
set_tests_properties(py_netns PROPERTIES LABELS "python;netns"
  SKIP_RETURN_CODE 77 TIMEOUT 300
  ENVIRONMENT "${QP_PY_ENV};QP_BIN=${CMAKE_BINARY_DIR}/bin")
