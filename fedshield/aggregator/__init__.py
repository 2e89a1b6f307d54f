"""The aggregator: round state, persistence and the HTTP service. Holds only the public context."""
