"""The aggregator's HTTP routes, one router per resource (they share :class:`~fedshield.aggregator.state.AppState`)."""

from __future__ import annotations

from . import health, rounds, silos, status, unlearning

ROUTERS = (health.router, silos.router, status.router, rounds.router, unlearning.router)
