# test_reply (cmocka): server/reply.c's messages and replies on their own.
target_sources(test_reply PRIVATE ${CMAKE_SOURCE_DIR}/server/reply.c)
target_include_directories(test_reply PRIVATE ${CMAKE_SOURCE_DIR}/server)
