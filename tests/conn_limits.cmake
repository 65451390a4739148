# What one connection may hold of qpiped (test_conn_limits: waiting
# requests, leases, handshake and auth time limits, floods, unread
# replies): it starts the real server.
add_dependencies(test_conn_limits qpiped)
set_tests_properties(test_conn_limits PROPERTIES LABELS server TIMEOUT 300)
