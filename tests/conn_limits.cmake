# What one connection may hold of qpiped (test_conn_limits: waiting
# requests, leases, handshake and auth time limits, floods, unread
# replies): it starts the real server.
add_dependencies(test_conn_limits qpiped)
set_tests_properties(test_conn_limits PROPERTIES LABELS server TIMEOUT 300)
# Again with the server's nng-stream driver (--transport nng).
add_test(NAME test_conn_limits_srv_nng COMMAND test_conn_limits)
set_tests_properties(test_conn_limits_srv_nng PROPERTIES LABELS server
  TIMEOUT 300
  ENVIRONMENT "QP_SERVER_TRANSPORT=nng;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
