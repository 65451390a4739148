# it_shmspace_server mounts a small tmpfs: skipped (77) where it cannot.
set_tests_properties(it_shmspace_server PROPERTIES SKIP_RETURN_CODE 77)
