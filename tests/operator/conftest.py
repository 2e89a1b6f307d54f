"""Fixtures of the operator tests: kmock's Kubernetes emulator on loopback and the real kopf operator against it."""

from __future__ import annotations

import asyncio

import kopf
import pytest
from support.kube_emulator import Emulator, declare_resources
from support.operator_harness import FakeAggregator, NotKopfTasks, emulator_urls, kmock_server

from fedshield.operator import handlers  # noqa: F401  (registers the handlers in kopf's default registry)
from fedshield.operator.kube import Kube


@pytest.fixture
async def k8s():
    async with Emulator() as handler, kmock_server(handler):
        declare_resources(handler)
        yield handler


@pytest.fixture
async def operator(k8s):
    url = str(k8s.url).rstrip("/")
    emulator_urls.append(url)
    aggregator = FakeAggregator()
    kube = Kube.for_url(url)
    stop, ready = asyncio.Event(), asyncio.Event()
    tasks = await kopf.spawn_tasks(standalone=True, clusterwide=True, stop_flag=stop, ready_flag=ready,
                                   memo=kopf.Memo(kube=kube, aggregator_status=aggregator))
    runner = asyncio.create_task(kopf.run_tasks(tasks, ignored=NotKopfTasks()))
    await asyncio.wait_for(ready.wait(), timeout=30)
    yield kube, aggregator
    stop.set()
    await asyncio.wait_for(runner, timeout=30)  # a loaded machine stops kopf slowly
    await kube.close()
