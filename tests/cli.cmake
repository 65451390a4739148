# The CLI tests: it_cli_auth needs a qpiped with --auth-token-file; a
# build without it exits 77, reported as skipped.
set_tests_properties(it_cli_auth PROPERTIES SKIP_RETURN_CODE 77)
