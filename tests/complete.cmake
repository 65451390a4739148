# Completion in one step (qp_queue_complete): test_complete (cmocka, kill
# points inside the shared-memory step) and it_complete_kill (workers and
# qpiped killed with SIGKILL at random; one result per task), with its
# worker program cpl_worker (built into build/bin, never installed).
add_executable(cpl_worker ${CMAKE_CURRENT_SOURCE_DIR}/cpl_worker.c)
target_include_directories(cpl_worker PRIVATE ${CMAKE_SOURCE_DIR}/lib)
target_link_libraries(cpl_worker PRIVATE qpipe_static)
qp_target(cpl_worker)
set_tests_properties(test_complete PROPERTIES LABELS queue)
set_tests_properties(it_complete_kill PROPERTIES LABELS "queue;server"
  RUN_SERIAL TRUE)
