# test_dedup (cmocka): a put applied once across a kill -9 of the real
# qpiped, for hosted shm queues and durable queues.
add_dependencies(test_dedup qpiped)
set_tests_properties(test_dedup PROPERTIES LABELS server TIMEOUT 300)
