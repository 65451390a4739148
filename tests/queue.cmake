# The shared-memory queue's tests: labels, and the long kill -9 run (1,000
# runs of test_shmq_crash) as a stress test, excluded from `make test`
# (run it with `make stress` or `ctest -L stress`).
set_tests_properties(test_queue test_shmq test_shmq_crash test_shmlease
  PROPERTIES LABELS queue)
# Its bound is on time after a kill: run it alone, not beside the others.
set_tests_properties(test_shmq_crash PROPERTIES RUN_SERIAL TRUE)
add_test(NAME test_shmq_crash_1000 COMMAND test_shmq_crash)
set_tests_properties(test_shmq_crash_1000 PROPERTIES
  LABELS "queue;stress" TIMEOUT 1200
  ENVIRONMENT "QP_CRASH_RUNS=1000;QP_SOURCE_DIR=${CMAKE_SOURCE_DIR};QP_BUILD_DIR=${CMAKE_BINARY_DIR}")
