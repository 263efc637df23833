"""Shared fixtures. Real servers live in tests/servers/, one module each."""
pytest_plugins = ["tests.servers.smtp", "tests.servers.dovecot", "tests.servers.postgres",
                  "tests.servers.helpdesk"]
