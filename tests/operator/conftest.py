"""Fixtures of the operator tests: kmock's Kubernetes emulator on loopback and the real kopf operator against it."""

from __future__ import annotations

import pytest
from support.kube_emulator import Emulator, declare_resources
from support.operator_harness import FakeAggregator, kmock_server, running_operator

from fedshield.operator import handlers  # noqa: F401  (registers the handlers in kopf's default registry)


@pytest.fixture
async def k8s():
    async with Emulator() as handler, kmock_server(handler):
        declare_resources(handler)
        yield handler


@pytest.fixture
async def operator(k8s):
    aggregator = FakeAggregator()
    async with running_operator(k8s, aggregator_status=aggregator) as kube:
        yield kube, aggregator
