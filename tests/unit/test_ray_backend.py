"""The Ray backend's logic without a cluster: a fake ``Cluster`` runs each actor in-process.

Everything but ``backends/ray/_ray.py`` is real here: ``RayBackend`` (sets, leases,
scaling), ``RayReplica`` (supervision, restarts, reasons) and ``ReplicaActor`` (loading a
real runtime, the echo runtime, on its model thread). The fake stands in for Ray exactly
where ``_ray`` does: it starts actors, forwards calls and streams, and "kills" an actor by
failing its pending and later calls with ``ActorGone``, as Ray does when a process dies.
The real cluster is exercised by tests/integration/backends/.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from typer.testing import CliRunner

from modelport.backends.base import ReplicaSetSpec
from modelport.backends.ray._ray import ActorGone, _probe, describe_death
from modelport.backends.ray.backend import RayBackend
from modelport.cli.main import app as cli_app
from modelport.engine.services import build_services
from modelport.errors import InvalidInput, NotReady, Unavailable, WorkerCrashed
from modelport.runtimes.base import LoadSpec, Tensors
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus
from tests.fixtures.echo_runtime import RUNTIME_CLASS

T = TypeVar("T")
X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


class FakeActor:
    """One in-process actor, run the way Ray runs a threaded actor: the default methods on
    one thread in arrival order, ``CONTROL_METHODS`` on threads of their own. ``kill``
    fails its pending and later calls with ``ActorGone``, as Ray does when a process dies."""

    def __init__(self, instance: Any, env: dict[str, str], num_cpus: float) -> None:
        self.instance = instance
        self.env = env
        self.num_cpus = num_cpus
        self.dead = asyncio.Event()
        self.cancelled_streams = 0
        self.model_thread = ThreadPoolExecutor(1)
        self._control = getattr(type(instance), "CONTROL_METHODS", frozenset())

    async def call(self, method: str, *args: Any) -> Any:
        if self.dead.is_set():
            raise ActorGone("actor process died: fake kill")
        loop = asyncio.get_running_loop()
        thread = None if method in self._control else self.model_thread
        work = loop.run_in_executor(thread, partial(getattr(self.instance, method), *args))
        death = asyncio.ensure_future(self.dead.wait())
        done, _ = await asyncio.wait({work, death}, return_when=asyncio.FIRST_COMPLETED)
        death.cancel()
        if work in done and not self.dead.is_set():
            return work.result()
        raise ActorGone("actor process died: fake kill")

    def stream(self, method: str, *args: Any) -> FakeStream:
        return FakeStream(self, getattr(self.instance, method)(*args))

    def kill(self) -> None:
        self.dead.set()
        self.instance._stopped.set()  # a dead process holds no thread: release ``watch``
        self.model_thread.shutdown(wait=False)


class FakeStream:
    def __init__(self, actor: FakeActor, generator: Any) -> None:
        self._actor = actor
        self._generator = generator

    async def __aiter__(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        done = object()
        while True:
            item = await loop.run_in_executor(self._actor.model_thread, next, self._generator, done)
            if item is done:
                return
            if self._actor.dead.is_set():
                raise ActorGone("actor process died: fake kill")
            yield item

    def cancel(self) -> None:
        self._actor.cancelled_streams += 1
        self._actor.model_thread.submit(self._generator.close)  # at the next item, like Ray


class FakeCluster:
    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.actors: list[FakeActor] = []
        self.connected = False

    async def connect(self) -> None:
        if not self.reachable:
            raise ConnectionError("no Ray cluster answers at 127.0.0.1:1")
        self.connected = True

    def spawn(
        self, cls: type, args: tuple[Any, ...], *, env: dict[str, str], num_cpus: float
    ) -> FakeActor:
        actor = FakeActor(cls(*args), env, num_cpus)
        self.actors.append(actor)
        return actor

    async def disconnect(self) -> None:
        self.connected = False
        for actor in self.actors:
            actor.kill()


def echo_spec(tmp_path: Path, config: dict[str, Any] | None = None) -> LoadSpec:
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}-echo.json"
    path.write_text(json.dumps(config or {}))
    return LoadSpec(
        runtime="echo",
        artifact_path=path,
        artifact_name="echo.json",
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        options={"runtime_class": RUNTIME_CLASS},
    )


def make_backend(tmp_path: Path, cluster: FakeCluster, **overrides: Any) -> RayBackend:
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "backend": "ray",
        "ray_replica_cpus": 0.5,
        "worker_restart_backoff_s": 0.05,
        "worker_start_timeout_s": 10,
        "request_timeout_s": 5,
    }
    return RayBackend(Settings(**{**fields, **overrides}), cluster)


def command(word: str) -> Tensors:
    return {**X, "command": np.array([word.encode()], dtype=object)}


async def call(backend: RayBackend, name: str, inputs: Tensors = X) -> Tensors:
    async with backend.lease(name, 5) as replica:
        return await replica.predict(inputs, {})


async def wait_until(
    backend: RayBackend, name: str, check: Callable[[list[ReplicaStatus]], bool]
) -> list[ReplicaStatus]:
    deadline = time.monotonic() + 10
    while not check(status := backend.replicas(name)):
        assert time.monotonic() < deadline, f"{name}: condition not met: {status}"
        await asyncio.sleep(0.01)
    return status


def ready(count: int) -> Callable[[list[ReplicaStatus]], bool]:
    return lambda s: len(s) == count and all(r.state is ReplicaState.READY for r in s)


def test_deploy_predict_and_shutdown(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        spec = ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1, env={"A": "1"})
        await backend.deploy(spec)
        (status,) = await wait_until(backend, "echo", ready(1))
        assert status.pid == os.getpid()  # the actor reports its process
        out = await call(backend, "echo")
        assert np.array_equal(out["x"], X["x"])
        assert backend.free_slots("echo") == 1
        (actor,) = cluster.actors
        assert (actor.env, actor.num_cpus) == ({"A": "1"}, 0.5)
        await backend.shutdown()
        assert actor.dead.is_set() and not cluster.connected
        assert backend.replicas("echo") == []

    run(scenario())


def test_model_errors_reach_the_caller_and_the_replica_lives(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = make_backend(tmp_path, FakeCluster())
        await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await wait_until(backend, "echo", ready(1))
        with pytest.raises(InvalidInput, match="echo says the input is invalid"):
            await call(backend, "echo", command("invalid"))
        with pytest.raises(Exception, match="echo was asked to raise"):
            await call(backend, "echo", command("raise"))
        assert np.array_equal((await call(backend, "echo"))["x"], X["x"])
        await backend.shutdown()

    run(scenario())


def test_load_failure_is_reported_and_not_retried(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        spec = ReplicaSetSpec("bad", echo_spec(tmp_path, {"fail": "weights are gone"}), 1)
        await backend.deploy(spec)
        (status,) = await wait_until(
            backend, "bad", lambda s: bool(s) and s[0].state is ReplicaState.FAILED
        )
        assert status.reason == "weights are gone"
        with pytest.raises(NotReady, match="weights are gone"):
            await call(backend, "bad")
        assert len(cluster.actors) == 1 and cluster.actors[0].dead.is_set()
        await backend.shutdown()

    run(scenario())


def test_dead_actor_fails_its_call_and_is_replaced(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await wait_until(backend, "echo", ready(1))
        slow = asyncio.create_task(call(backend, "echo", command("sleep:2")))
        await wait_until(backend, "echo", lambda s: s[0].inflight == 1)
        cluster.actors[0].kill()
        with pytest.raises(WorkerCrashed, match=r"crashed .*fake kill.*restarting"):
            await slow
        assert backend.free_slots("echo") == 0  # no lease reaches the dead actor
        (status,) = await wait_until(backend, "echo", lambda s: ready(1)(s) and s[0].restarts)
        assert status.restarts == 1
        assert status.reason == "crashed (actor process died: fake kill)"
        assert len(cluster.actors) == 2  # a new actor, not the old one revived
        assert np.array_equal((await call(backend, "echo"))["x"], X["x"])
        await backend.shutdown()

    run(scenario())


def test_streams_and_early_close(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await wait_until(backend, "echo", ready(1))
        async with backend.lease("echo", 5) as replica:
            items = [item async for item in replica.stream({"items": [1, "two", {"3": 3}]})]
            assert items == [1, "two", {"3": 3}]
            assert cluster.actors[0].cancelled_streams == 0
            stream = replica.stream({"items": list(range(100)), "delay": 0.01})
            assert await anext(stream) == 0
            await stream.aclose()  # type: ignore[attr-defined]
            assert cluster.actors[0].cancelled_streams == 1
        assert np.array_equal((await call(backend, "echo"))["x"], X["x"])
        await backend.shutdown()

    run(scenario())


def test_scale_up_down_and_undeploy(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await wait_until(backend, "echo", ready(1))
        await backend.scale("echo", 3)
        await wait_until(backend, "echo", ready(3))
        assert backend.free_slots("echo") == 3
        await backend.scale("echo", 1)
        await wait_until(backend, "echo", ready(1))
        await wait_until(
            backend, "echo", lambda s: sum(a.dead.is_set() for a in cluster.actors) == 2
        )
        await backend.undeploy("echo")
        assert all(a.dead.is_set() for a in cluster.actors)
        assert backend.free_slots("echo") == 0
        await backend.shutdown()

    run(scenario())


def test_redeploy_keeps_serving_until_the_new_set_is_ready(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def scenario() -> None:
        backend = make_backend(tmp_path, cluster)
        await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await wait_until(backend, "echo", ready(1))
        slow_load = echo_spec(tmp_path, {"sleep": 0.5})
        await backend.deploy(ReplicaSetSpec("echo", slow_load, replicas=1))
        # The new actor is still loading; the old one answers meanwhile.
        assert backend.replicas("echo")[0].state is ReplicaState.STARTING
        assert np.array_equal((await call(backend, "echo"))["x"], X["x"])
        await wait_until(backend, "echo", ready(1))
        await wait_until(backend, "echo", lambda s: cluster.actors[0].dead.is_set())
        await backend.shutdown()

    run(scenario())


def test_unreachable_cluster_is_a_clear_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = make_backend(tmp_path, FakeCluster(reachable=False))
        with pytest.raises(Unavailable, match="cannot reach its cluster: no Ray cluster"):
            await backend.deploy(ReplicaSetSpec("echo", echo_spec(tmp_path), replicas=1))
        await backend.shutdown()

    run(scenario())


def test_probe_fails_fast_on_a_closed_port() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        _probe(f"127.0.0.1:{port}")
    with pytest.raises(ConnectionError, match="not host:port"):
        _probe("head-node")


def test_describe_death_keeps_rays_exit_detail() -> None:
    message = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ReplicaActor\n"
        "The actor is dead because its worker process has died. Worker exit type: "
        "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error "
        "code 2. End of file. Some common causes include: (1) the process was killed"
    )
    assert describe_death(Exception(message)) == (
        "actor process died: Worker unexpectedly exits with a connection error code 2. End of file"
    )
    assert describe_death(Exception("")) == "actor process died"


def test_settings_pick_the_ray_backend(tmp_path: Path) -> None:
    services = build_services(
        Settings(data_dir=tmp_path / "data", backend="ray", ray_address="127.0.0.1:6379")
    )
    try:
        assert services.backend.name == "ray"
    finally:
        services.close()
    with pytest.raises(ValueError, match="backend"):
        Settings(data_dir=tmp_path / "data", backend="kubernetes")


def test_serve_refuses_an_unknown_backend() -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--backend", "kubernetes"])
    assert result.exit_code == 2
    assert "kubernetes" in result.output
