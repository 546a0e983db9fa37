"""What the three services share, and nothing else: configuration, the database, SigV4, TLS, the XKS wire
format, the proxy link, key files and the HTTP runner. The bottom floor: it imports no service and nothing
of the command line (import-linter checks this in CI)."""
