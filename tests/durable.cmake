# Durable queues (lib/durq*.c, lib/store.c, server/registry.c): test_durq (cmocka: torn
# tails cut at every byte, corrupt records quarantined, compaction, the
# local QP_OPEN_DURABLE queue, the window of put requests remembered),
# the it_durable_* scripts and their helper program qp_durable_tool (built
# into build/bin, never installed; bench/run durable uses it too).
# it_durable_full and it_durable_enospc (a queue that filled its disk
# recovers once drained) exit 77 where they cannot mount a small tmpfs
# (not root), which ctest reports as skipped. The kill -9 run
# goes 3 rounds in the default run and 20 as a stress test.
add_executable(qp_durable_tool ${CMAKE_CURRENT_SOURCE_DIR}/durable_tool.c)
target_link_libraries(qp_durable_tool PRIVATE qpipe_static)
qp_target(qp_durable_tool)

set_tests_properties(test_durq PROPERTIES LABELS durable)
set_tests_properties(it_durable_server it_durable_kill PROPERTIES
  LABELS "durable;server")
set_tests_properties(it_durable_full it_durable_enospc PROPERTIES
  LABELS "durable;server" SKIP_RETURN_CODE 77)
add_test(NAME it_durable_kill_20 COMMAND bash
  ${CMAKE_CURRENT_SOURCE_DIR}/it_durable_kill.sh)
set_tests_properties(it_durable_kill_20 PROPERTIES
  LABELS "durable;server;stress" TIMEOUT 1200
  ENVIRONMENT "QP_KILLS=20;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR};QP_BIN=${CMAKE_BINARY_DIR}/bin")
