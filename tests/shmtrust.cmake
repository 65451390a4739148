# it_shm_trust: segments another user owns, truncated or scribbled on,
# against root's qpipe and qpiped. It runs commands as nobody and exits 77
# (skipped) where it cannot.
set_tests_properties(it_shm_trust PROPERTIES LABELS "queue;server"
  SKIP_RETURN_CODE 77)
# it_shm_rm: rm of a shm:// queue in use, and waiter counts that heal.
set_tests_properties(it_shm_rm PROPERTIES LABELS "queue;server")
