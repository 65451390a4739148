# One queue over several servers and gets over many queues (issue 16:
# lib/part.c, lib/qwait.c): the helper program qp_part_peer (producer,
# worker, benchmark; built into build/bin, never installed; bench/run part
# uses it too), and the labels of the tests. it_part_netns exits 77 where
# network namespaces cannot be made (not root), which ctest reports as
# skipped.
add_executable(qp_part_peer ${CMAKE_CURRENT_SOURCE_DIR}/part_peer.c)
target_link_libraries(qp_part_peer PRIVATE qpipe_static)
qp_target(qp_part_peer)

set_tests_properties(test_qwait test_part it_cli_many it_part_cli PROPERTIES
  LABELS "queue;server")
set_tests_properties(it_part_netns PROPERTIES LABELS "server;netns"
  SKIP_RETURN_CODE 77 RUN_SERIAL TRUE)
set_tests_properties(it_part_compose PROPERTIES LABELS "demo"
  SKIP_RETURN_CODE 77)
