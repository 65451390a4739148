# The authentication and TLS tests (lib/auth.c, lib/tls.c). test_tls makes
# its certificates with openssl at run time; without it, it exits 77,
# reported as skipped.
set_tests_properties(test_auth PROPERTIES LABELS sec)
set_tests_properties(test_tls PROPERTIES LABELS sec SKIP_RETURN_CODE 77)
# test_remote_sec starts the real qpiped (with a token, with TLS); its TLS
# test is skipped where openssl cannot make the certificates.
add_dependencies(test_remote_sec qpiped)
set_tests_properties(test_remote_sec PROPERTIES LABELS "sec;server")
