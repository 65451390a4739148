# The pipe tests' helper program (tests/pipe_peer.c), used by
# test_conn_remote and the it_pipe_* scripts; built into build/bin, never
# installed. it_pipe_netns exits 77 where it cannot create network
# namespaces, which ctest reports as skipped.
add_executable(qp_pipe_peer ${CMAKE_CURRENT_SOURCE_DIR}/pipe_peer.c)
target_include_directories(qp_pipe_peer PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
target_link_libraries(qp_pipe_peer PRIVATE qpipe_static)
qp_target(qp_pipe_peer)
add_dependencies(test_conn_remote qp_pipe_peer)

set_tests_properties(test_pipe test_conn_remote it_pipe_seed
  PROPERTIES LABELS pipe)
set_tests_properties(it_pipe_netns PROPERTIES LABELS "pipe;netns"
  SKIP_RETURN_CODE 77)
# Direct connections again on the nng stream driver (tcp:// and ipc://
# with QPIPE_TRANSPORT=nng; tls+tcp:// is always nng's: test_tls).
add_test(NAME test_conn_remote_nng COMMAND test_conn_remote)
set_tests_properties(test_conn_remote_nng PROPERTIES LABELS pipe
  ENVIRONMENT "QPIPE_TRANSPORT=nng")
