"""Transport security and admission limits: certificates, TLS, silo identities, rate and concurrency limits."""
