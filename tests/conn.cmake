# test_conn (cmocka): server/conn.c's lease records on their own, linked
# with stubs for what conn.c calls in the rest of the server.
target_sources(test_conn PRIVATE ${CMAKE_SOURCE_DIR}/server/conn.c)
target_include_directories(test_conn PRIVATE ${CMAKE_SOURCE_DIR}/server)
