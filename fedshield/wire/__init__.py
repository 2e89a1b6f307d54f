"""The silo <-> aggregator protocol: message models and the HTTP client."""
