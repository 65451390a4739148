# The Python package (python/qpipe): its cffi extension is built into
# build/python/qpipe against this build's libqpipe.so, and the tests under
# python/tests run with python3 -m unittest from the source tree
# (PYTHONPATH: python/tests, python, build/python). Label "python".
#
# Sanitizer builds skip them, on purpose: python3 is not built with ASan,
# so loading an ASan-instrumented libqpipe into it needs libasan
# LD_PRELOADed, and then ASan reports CPython's own allocations (leaks at
# exit, its allocator's interceptors) rather than qpipe's. The C tests
# cover the library under ASan+UBSan; the Python tests run in the plain
# build.
if(QP_SANITIZER)
  message(STATUS "qpipe: Python tests run in the plain build only "
                 "(python3 is not an ASan build: see tests/python.cmake)")
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
