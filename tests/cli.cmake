# The CLI tests: it_cli_auth runs against qpiped's token and TLS support.
