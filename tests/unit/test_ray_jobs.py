"""Training jobs on the Ray backend without a cluster: a fake ``Cluster`` runs ``JobActor``
in-process, the way Ray runs a threaded actor.

Everything but ``backends/ray/_ray.py`` is real: ``RayJobRunner`` and its handle (the pump,
cancel with its grace, the exit codes) and ``JobActor``, which starts real job workers
(``python -m modelport.training.job_worker``) or, through the runner's ``python`` hook, small
shell scripts that speak the same JSON lines. The fake stands in for Ray where ``_ray`` does:
``run`` runs on the actor's one thread, control methods on their own, and killing the actor
fails its stream with ``ActorGone`` (its worker dies with it, as ``PR_SET_PDEATHSIG`` makes it
do in a real actor process). The real cluster: tests/integration/backends/test_ray_only.py and
test_conformance.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from modelport.backends.jobs import JOB_LOG
from modelport.backends.ray._ray import ActorGone
from modelport.backends.ray.jobs import JobActor, RayJobRunner
from modelport.engine.services import build_services
from modelport.settings import Settings
from modelport.training.job_worker import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from tests.unit.training.test_job_worker import _long_mlp, _spec

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 240))


class FakeActor:
    """One in-process actor: ``run`` on its single default thread, control methods on
    threads of their own; ``kill`` fails the stream with ``ActorGone`` at its next item."""

    def __init__(self, instance: JobActor, num_cpus: float) -> None:
        self.instance = instance
        self.num_cpus = num_cpus
        self.dead = False
        self.calls: list[str] = []
        self.default_thread = ThreadPoolExecutor(1)
        self.control_threads = ThreadPoolExecutor(2)

    async def call(self, method: str, *args: Any) -> Any:
        if self.dead:
            raise ActorGone("actor process died: fake kill")
        self.calls.append(method)
        assert method in JobActor.CONTROL_METHODS  # nothing else is called beside ``run``
        bound = partial(getattr(self.instance, method), *args)
        return await asyncio.get_running_loop().run_in_executor(self.control_threads, bound)

    def stream(self, method: str, *args: Any) -> FakeStream:
        return FakeStream(self, getattr(self.instance, method)(*args))

    def kill(self) -> None:
        if not self.dead:
            self.dead = True
            self.instance.kill_job()  # what PR_SET_PDEATHSIG does when the process dies


class FakeStream:
    def __init__(self, actor: FakeActor, generator: Any) -> None:
        self._actor = actor
        self._generator = generator

    async def __aiter__(self) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        end = object()
        while True:
            item = await loop.run_in_executor(
                self._actor.default_thread, next, self._generator, end
            )
            if self._actor.dead:
                raise ActorGone("actor process died: fake kill")
            if item is end:
                return
            yield item

    def cancel(self) -> None:  # pragma: no cover - the runner never cancels a job's stream
        raise AssertionError("not used by jobs")


class FakeCluster:
    def __init__(self, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self.actors: list[FakeActor] = []

    async def connect(self) -> None:
        if not self.reachable:
            raise ConnectionError("no Ray cluster answers at 127.0.0.1:1")

    def spawn(
        self, cls: type, args: tuple[Any, ...], *, env: dict[str, str], num_cpus: float
    ) -> FakeActor:
        assert cls is JobActor and env == {}  # the job's env travels as an argument
        actor = FakeActor(cls(*args), num_cpus)
        self.actors.append(actor)
        return actor

    async def disconnect(self) -> None:
        for actor in self.actors:
            actor.kill()


async def _job(runner: RayJobRunner, workdir: Path) -> tuple[list[dict[str, Any]], int]:
    handle = await runner.start(7, workdir)
    events = [event async for event in handle.events()]
    return events, await handle.wait()


def _script(tmp_path: Path, body: str) -> str:
    """A stand-in for the job worker's interpreter (the runner's ``python`` hook)."""
    path = tmp_path / "job.sh"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_a_job_runs_in_its_actor_and_says_where_first(tmp_path: Path) -> None:
    cluster = FakeCluster()
    workdir = _spec(tmp_path / "run")
    events, code = run(_job(RayJobRunner(cluster, num_cpus=0.5), workdir))
    assert code == EXIT_OK, (workdir / JOB_LOG).read_text()
    where = events[0]
    assert where["type"] == "log"
    assert (where["data"]["runner"], where["data"]["pid"]) == ("ray", os.getpid())
    assert "node_id" not in where["data"]  # not in a Ray process: placement() is empty
    assert where["data"]["message"].startswith("training run 7 runs on Ray")
    assert [e["type"] for e in events[1:2]] == ["started"] and events[-1]["type"] == "result"
    assert (workdir / JOB_LOG).read_text().startswith(where["data"]["message"] + "\n")
    (actor,) = cluster.actors
    assert actor.num_cpus == 0.5
    assert actor.dead  # one job per actor: it is ended with its job


@pytest.mark.slow
def test_cancel_stops_the_job_worker_with_exit_3(tmp_path: Path) -> None:
    workdir = _long_mlp(tmp_path / "run", epochs=2000)

    async def go() -> tuple[list[dict[str, Any]], int]:
        handle = await RayJobRunner(FakeCluster(), grace_s=60).start(1, workdir)
        events: list[dict[str, Any]] = []
        async for event in handle.events():
            events.append(event)
            if event["type"] == "epoch":
                await handle.cancel()
        return events, await handle.wait()

    events, code = run(go())
    assert code == EXIT_CANCELLED
    assert events[-1] == {"type": "cancelled"}
    assert not (workdir / "model.mpbundle").exists()


def test_cancel_before_the_actor_exists_starts_nothing(tmp_path: Path) -> None:
    cluster = FakeCluster()

    async def go() -> tuple[list[dict[str, Any]], int]:
        handle = await RayJobRunner(cluster).start(1, tmp_path / "run")
        await handle.cancel()  # the pump has not joined the cluster yet
        return [e async for e in handle.events()], await handle.wait()

    assert run(go()) == ([{"type": "cancelled"}], EXIT_CANCELLED)
    assert cluster.actors == []


def test_an_actor_terminated_before_run_never_starts_the_worker(tmp_path: Path) -> None:
    actor = JobActor(1, str(tmp_path / "run"), {}, _script(tmp_path, "touch started"))
    actor.terminate()
    items = list(actor.run())
    assert [kind for kind, _ in items] == ["event", "event", "exit"]
    assert items[1:] == [("event", {"type": "cancelled"}), ("exit", EXIT_CANCELLED)]
    assert not (tmp_path / "run" / JOB_LOG).exists()


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    stubborn = _script(
        tmp_path, 'trap \'\' TERM\necho \'{"type": "log", "data": {"pid": \'$$\'}}\'\nsleep 60'
    )
    cluster = FakeCluster()

    async def go() -> tuple[int, int]:
        handle = await RayJobRunner(cluster, grace_s=0.5, python=stubborn).start(1, tmp_path)
        events = aiter(handle.events())
        await anext(events)  # where it runs
        pid = int((await anext(events))["data"]["pid"])  # the trap is installed
        await handle.cancel()
        return pid, await handle.wait()

    pid, code = run(go())
    assert code == -signal.SIGKILL
    (actor,) = cluster.actors
    assert actor.calls == ["terminate", "kill_job"] and actor.dead
    assert not _alive(pid)


def test_a_dead_actor_fails_the_job_with_rays_reason(tmp_path: Path) -> None:
    script = _script(tmp_path, 'echo \'{"type": "log", "data": {"pid": \'$$\'}}\'\nsleep 60')
    cluster = FakeCluster()

    async def go() -> tuple[list[dict[str, Any]], int, int]:
        handle = await RayJobRunner(cluster, python=script).start(1, tmp_path)
        events = [e async for e in _kill_after(cluster, handle.events(), 2)]
        return events, int(events[1]["data"]["pid"]), await handle.wait()

    events, pid, code = run(go())
    assert code == EXIT_FAILED
    assert events[-1]["type"] == "error"
    assert events[-1]["message"] == (
        "the Ray actor running the job died: actor process died: fake kill"
    )
    assert not _alive(pid)


async def _kill_after(
    cluster: FakeCluster, events: AsyncIterator[dict[str, Any]], count: int
) -> AsyncIterator[dict[str, Any]]:
    """Pass ``events`` on, killing the (only) actor once ``count`` have arrived."""
    seen = 0
    async for event in events:
        yield event
        seen += 1
        if seen == count:
            cluster.actors[0].kill()


class PendingActor:
    """An actor Ray cannot place: calls and its stream wait until it is killed."""

    def __init__(self) -> None:
        self.dead = asyncio.Event()

    async def call(self, method: str, *args: Any) -> Any:
        await self.dead.wait()
        raise ActorGone("actor process died: killed before it was placed")

    def stream(self, method: str, *args: Any) -> Any:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Any]:
        await self.dead.wait()
        raise ActorGone("actor process died: killed before it was placed")
        yield  # an async generator

    def kill(self) -> None:
        self.dead.set()


class NoRoomCluster(FakeCluster):
    def spawn(
        self, cls: type, args: tuple[Any, ...], *, env: dict[str, str], num_cpus: float
    ) -> Any:
        return PendingActor()


def test_cancelling_a_job_whose_actor_never_starts_is_bounded_by_the_grace(
    tmp_path: Path,
) -> None:
    async def go() -> tuple[list[dict[str, Any]], int]:
        handle = await RayJobRunner(NoRoomCluster(), grace_s=0.2).start(1, tmp_path / "run")
        await asyncio.sleep(0)  # the pump spawns the actor
        await handle.cancel()
        return [e async for e in handle.events()], await handle.wait()

    assert run(go()) == ([], -signal.SIGKILL)


def test_an_unreachable_cluster_fails_the_job_and_says_why(tmp_path: Path) -> None:
    events, code = run(_job(RayJobRunner(FakeCluster(reachable=False)), tmp_path / "run"))
    assert code == EXIT_FAILED
    (error,) = events
    assert error["type"] == "error" and "127.0.0.1:1" in error["message"]
    assert error["message"].startswith("the Ray backend cannot reach its cluster")


def test_rays_thread_pin_is_dropped_and_the_runner_env_added(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray sets OMP_NUM_THREADS in its workers; a job gets the threads a local one gets."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    script = _script(
        tmp_path,
        'echo "{\\"type\\": \\"log\\", \\"data\\": {\\"omp\\": \\"${OMP_NUM_THREADS-unset}\\", '
        '\\"extra\\": \\"$EXTRA\\"}}"',
    )
    runner = RayJobRunner(FakeCluster(), env={"EXTRA": "x"}, python=script)
    events, code = run(_job(runner, tmp_path / "run"))
    assert code == 0
    assert events[1]["data"] == {"omp": "unset", "extra": "x"}


def test_the_ray_backend_runs_training_jobs_on_its_own_cluster(tmp_path: Path) -> None:
    """``backend = "ray"`` picks the Ray job runner, on the backend's cluster connection."""
    services = build_services(
        Settings(data_dir=tmp_path / "data", backend="ray", ray_address="127.0.0.1:6379")
    )
    try:
        runner = services.training._scheduler._runner  # private: how it is wired
        assert isinstance(runner, RayJobRunner)
        assert runner._cluster is services.backend._cluster
    finally:
        services.close()
