# qpiped's tests: test_remote (cmocka, starts the real server), the
# it_server_* scripts, their helper program qps_tool (a small C client of
# remote queues, built into build/bin, never installed), and the stress
# run of 1,000 blocked getters. it_server_netns exits 77 where it cannot
# create network namespaces, it_server_affinity on a machine of one CPU,
# which ctest reports as skipped.
add_executable(qps_tool ${CMAKE_CURRENT_SOURCE_DIR}/qps_tool.c)
target_link_libraries(qps_tool PRIVATE qpipe_static)
qp_target(qps_tool)
add_dependencies(test_remote qpiped qps_tool)

set_tests_properties(test_remote PROPERTIES LABELS server TIMEOUT 600)
set_tests_properties(it_server_basics it_server_nngcat it_server_sigterm
  it_server_stopped
  PROPERTIES LABELS server)
set_tests_properties(it_server_netns PROPERTIES LABELS "server;netns"
  SKIP_RETURN_CODE 77)
# Needs two CPUs: exits 77 (skipped) with one.
set_tests_properties(it_server_affinity PROPERTIES LABELS server
  SKIP_RETURN_CODE 77)

# 1,000 clients each blocked in a get with its own timeout (the default
# run holds 300, 100 under the sanitizers).
add_test(NAME test_remote_getters_1000 COMMAND test_remote)
set_tests_properties(test_remote_getters_1000 PROPERTIES LABELS stress
  TIMEOUT 600
  ENVIRONMENT "QP_GETTERS=1000;QP_TEST_FILTER=test_remote_many_getters;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")

# The SP wire format (server/link.c, the client's link_sock.c) against nng
# peers and bad ones, and the remote tests with the other transport on one
# end: the plain-socket client against qpiped --transport nng (its
# nng-stream driver), and the client's nng stream driver
# (QPIPE_TRANSPORT=nng) against the plain-socket server.
add_dependencies(test_spnet qpiped)
# Alone: its peer that does not read keeps the server busy for a few
# seconds, which would skew the timing checks of tests running beside it.
set_tests_properties(test_spnet PROPERTIES LABELS server TIMEOUT 300
  RUN_SERIAL TRUE)
add_test(NAME test_remote_srv_nng COMMAND test_remote)
set_tests_properties(test_remote_srv_nng PROPERTIES LABELS server
  TIMEOUT 600
  ENVIRONMENT "QP_SERVER_TRANSPORT=nng;QP_TEST_FILTER=test_remote_p*;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
# Every remote test again on the client's other driver (link_nng.c).
add_test(NAME test_remote_cli_nng COMMAND test_remote)
set_tests_properties(test_remote_cli_nng PROPERTIES LABELS server
  TIMEOUT 600
  ENVIRONMENT "QPIPE_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
add_test(NAME test_remote_sec_srv_nng COMMAND test_remote_sec)
set_tests_properties(test_remote_sec_srv_nng PROPERTIES LABELS "server;sec"
  ENVIRONMENT "QP_SERVER_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
add_test(NAME test_remote_sec_cli_nng COMMAND test_remote_sec)
set_tests_properties(test_remote_sec_cli_nng PROPERTIES LABELS "server;sec"
  ENVIRONMENT "QPIPE_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
add_test(NAME test_remote_killed_srv_nng COMMAND test_remote)
set_tests_properties(test_remote_killed_srv_nng PROPERTIES LABELS server
  TIMEOUT 600
  ENVIRONMENT "QP_SERVER_TRANSPORT=nng;QP_TEST_FILTER=test_remote_server_killed;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")

# nng 1.5.2 leaks connections caught in their handshake when a dialer
# closes (tests/lsan-nng.supp says which); only the tests that provoke it.
set_property(TEST test_remote_sec test_remote_sec_srv_nng
  test_remote_sec_cli_nng APPEND PROPERTY ENVIRONMENT
  "LSAN_OPTIONS=suppressions=${CMAKE_SOURCE_DIR}/tests/lsan-nng.supp")

# The CLI's remote scenarios again with the client on the connection
# layer's nng stream driver (QPIPE_TRANSPORT=nng).
foreach(name it_cli_remote it_cli_pipe it_cli_auth)
  add_test(NAME ${name}_nng COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${name}.sh)
  set_tests_properties(${name}_nng PROPERTIES LABELS server TIMEOUT 300
    ENVIRONMENT "QPIPE_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR};QP_BIN=${CMAKE_BINARY_DIR}/bin")
endforeach()
# The server's scenarios again on its other driver: tcp:// and ipc:// on
# nng streams (--transport nng) instead of plain sockets.
add_test(NAME test_spnet_srv_nng COMMAND test_spnet)
set_tests_properties(test_spnet_srv_nng PROPERTIES LABELS server
  TIMEOUT 300 RUN_SERIAL TRUE
  ENVIRONMENT "QP_SPNET_SERVER=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
foreach(t it_server_basics it_server_nngcat it_server_sigterm it_cli_remote
    it_cli_pipe)
  add_test(NAME ${t}_srv_nng COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${t}.sh)
  set_tests_properties(${t}_srv_nng PROPERTIES LABELS server TIMEOUT 300
    ENVIRONMENT "QP_SERVER_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR};QP_BIN=${CMAKE_BINARY_DIR}/bin")
endforeach()
