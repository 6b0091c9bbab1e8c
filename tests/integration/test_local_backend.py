"""The local backend with real worker processes running the echo runtime.

Everything here spawns real ``python -m modelport.backends.worker`` processes; the echo
runtime (tests/fixtures/echo_runtime.py) crashes, sleeps or fails on demand, so crash
handling, restarts, load failures, scaling and shutdown are exercised for real.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from modelport.backends.base import ReplicaSetSpec
from modelport.backends.local import LocalBackend, inspect_signature
from modelport.errors import (
    ArtifactCorrupted,
    InvalidInput,
    ModelLoadError,
    ModelportError,
    NotReady,
    UnsafeArtifact,
    WorkerCrashed,
)
from modelport.runtimes.base import LoadSpec, Tensors
from modelport.settings import Settings
from modelport.types.admin import ReplicaState, ReplicaStatus, Signature, TensorSpec
from tests.fixtures.echo_runtime import RUNTIME_CLASS, SIGNATURE

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
ENV = {"PYTHONPATH": str(REPO)}  # workers run with -P: they import the fixture from here
X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 90))


def artifact(tmp_path: Path, config: dict[str, Any], name: str = "echo.json") -> LoadSpec:
    path = tmp_path / f"{len(list(tmp_path.iterdir()))}-{name}"
    path.write_text(json.dumps(config))
    return LoadSpec(
        runtime="echo",
        artifact_path=path,
        artifact_name=name,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        options={"runtime_class": RUNTIME_CLASS},
    )


def make_backend(tmp_path: Path, **overrides: Any) -> LocalBackend:
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "worker_restart_backoff_s": 0.2,
        "worker_restart_backoff_max_s": 1.0,
        "worker_start_timeout_s": 30,
        "request_timeout_s": 10,
    }
    return LocalBackend(Settings(**{**fields, **overrides}))


def replica_set(name: str, load: LoadSpec, replicas: int = 1) -> ReplicaSetSpec:
    return ReplicaSetSpec(name=name, load=load, replicas=replicas, env=ENV)


def command(word: str) -> Tensors:
    return {**X, "command": np.array([word.encode()], dtype=object)}


async def call(backend: LocalBackend, name: str, inputs: Tensors = X) -> Tensors:
    async with backend.lease(name, 30) as replica:
        return await replica.predict(inputs, {})


async def pid_of_call(backend: LocalBackend, name: str) -> int:
    return int((await call(backend, name, command("pid")))["pid"][0])


async def wait_until(
    backend: LocalBackend,
    name: str,
    check: Callable[[list[ReplicaStatus]], bool],
    timeout: float = 30,
) -> list[ReplicaStatus]:
    deadline = time.monotonic() + timeout
    while not check(status := backend.replicas(name)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: condition not met in {timeout}s: {status}")
        await asyncio.sleep(0.05)
    return status


def all_ready(count: int) -> Callable[[list[ReplicaStatus]], bool]:
    return lambda s: len(s) == count and all(r.state is ReplicaState.READY for r in s)


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def wait_gone(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not all(is_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not is_gone(p)]}"
        await asyncio.sleep(0.05)


def test_a_crash_fails_inflight_calls_at_once_and_the_replica_comes_back(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        await backend.deploy(replica_set("e", artifact(tmp_path, {}), replicas=2))
        first = await wait_until(backend, "e", all_ready(2))
        np.testing.assert_array_equal((await call(backend, "e"))["x"], X["x"])

        async with backend.lease("e", 30) as replica:
            crashed = {r.id: r for r in first}[replica.id]
            # Two calls on the crashing worker: the one that crashes it and one queued behind.
            doomed = [
                asyncio.create_task(replica.predict(command("crash"), {})),
                asyncio.create_task(replica.predict(X, {})),
            ]
            outcomes = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), 10)
        for outcome in outcomes:
            assert isinstance(outcome, WorkerCrashed), outcome
            assert f"replica {replica.id} of deployment 'e' crashed" in str(outcome)
            assert "killed by signal SIGSEGV" in str(outcome)

        status = {r.id: r for r in backend.replicas("e")}[replica.id]
        assert status.restarts == 1
        assert status.reason is not None
        assert "SIGSEGV" in status.reason
        assert "echo: crashing on request" in status.reason  # the worker's last stderr line
        # The other replica serves meanwhile.
        other = next(r for r in first if r.id != replica.id)
        assert await pid_of_call(backend, "e") == other.pid

        back = await wait_until(backend, "e", all_ready(2))
        revived = {r.id: r for r in back}[replica.id]
        assert revived.pid not in (None, crashed.pid)
        assert revived.reason == status.reason  # the last crash stays visible

        # A worker killed from outside while a call waits on it: the call fails fast too.
        async with backend.lease("e", 30) as replica:
            slow = asyncio.create_task(replica.predict(command("sleep:30"), {}))
            await asyncio.sleep(0.3)
            victim = {r.id: r for r in backend.replicas("e")}[replica.id].pid
            assert victim is not None
            started = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            with pytest.raises(WorkerCrashed, match="killed by signal SIGKILL"):
                await asyncio.wait_for(slow, 10)
            assert time.monotonic() - started < 5
        await wait_until(backend, "e", all_ready(2))
        pids = {await pid_of_call(backend, "e") for _ in range(6)}
        assert pids == {r.pid for r in backend.replicas("e")}  # both serve again
        await backend.shutdown()

    run(main())


def test_a_load_failure_marks_the_replica_failed_without_restarting(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        impatient = make_backend(tmp_path / "impatient", worker_start_timeout_s=4)
        corrupt = artifact(tmp_path, {})
        corrupt.artifact_path.write_text('{"changed": "on disk"}')
        await backend.deploy(replica_set("corrupt", corrupt))
        await backend.deploy(replica_set("broken", artifact(tmp_path, {"fail": "no weights"})))
        await backend.deploy(replica_set("segv", artifact(tmp_path, {"crash": True})))
        await impatient.deploy(replica_set("slow", artifact(tmp_path, {"sleep": 30})))
        unknown = LoadSpec(**{**artifact(tmp_path, {}).__dict__, "runtime": "nope", "options": {}})
        await backend.deploy(replica_set("unknown", unknown))

        failed = lambda s: s[0].state is ReplicaState.FAILED  # noqa: E731
        corrupt_status = (await wait_until(backend, "corrupt", failed))[0]
        assert corrupt_status.reason and "corrupted" in corrupt_status.reason
        broken_status = (await wait_until(backend, "broken", failed))[0]
        assert broken_status.reason and broken_status.reason.startswith("no weights")
        segv_status = (await wait_until(backend, "segv", failed))[0]
        assert segv_status.reason and "crashed while loading" in segv_status.reason
        assert (
            "SIGSEGV" in segv_status.reason and "echo: crashing while loading" in segv_status.reason
        )
        slow_status = (await wait_until(impatient, "slow", failed))[0]
        assert slow_status.reason and "did not load within 4 s" in slow_status.reason
        unknown_status = (await wait_until(backend, "unknown", failed))[0]
        assert unknown_status.reason and "unknown runtime 'nope'" in unknown_status.reason

        started = time.monotonic()
        with pytest.raises(
            NotReady, match=r"'corrupt' has no ready replica: r1 failed: .*corrupted"
        ):
            await call(backend, "corrupt")
        assert time.monotonic() - started < 1  # no waiting for a replica that cannot come

        await asyncio.sleep(1.0)  # five restart backoffs' worth: no restart may happen
        names = ("corrupt", "broken", "segv", "unknown")
        statuses = [s for name in names for s in backend.replicas(name)]
        for status in [*statuses, *impatient.replicas("slow")]:
            assert (status.state, status.restarts) == (ReplicaState.FAILED, 0)
            assert status.pid is not None and is_gone(status.pid)
        await backend.shutdown()
        await impatient.shutdown()

    run(main())


def test_scale_up_and_down_and_inflight_calls_finish_on_removed_replicas(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path, replica_max_inflight=2)
        await backend.deploy(replica_set("e", artifact(tmp_path, {})))
        await wait_until(backend, "e", all_ready(1))
        await backend.scale("e", 3)
        three = await wait_until(backend, "e", all_ready(3))
        assert [r.id for r in three] == ["r1", "r2", "r3"]
        assert backend.free_slots("e") == 3 * 2

        # Hold one call on each replica, then scale down under them.
        leases = [backend.lease("e", 5) for _ in range(3)]
        replicas = [await lease.__aenter__() for lease in leases]
        assert sorted(r.id for r in replicas) == ["r1", "r2", "r3"]
        calls = [asyncio.create_task(r.predict(command("sleep:0.5"), {})) for r in replicas]
        await asyncio.sleep(0.1)
        await backend.scale("e", 1)
        assert [r.id for r in backend.replicas("e")] == ["r1"]
        for result in await asyncio.gather(*calls):
            np.testing.assert_array_equal(result["x"], X["x"])  # drained, not killed
        for lease in leases:
            await lease.__aexit__(None, None, None)
        await wait_gone([r.pid for r in three[1:] if r.pid])
        assert await pid_of_call(backend, "e") == three[0].pid

        await backend.scale("e", 0)
        await wait_gone([three[0].pid or 0])
        with pytest.raises(NotReady, match="0 replicas"):
            async with backend.lease("e", 0.2):
                pass
        await backend.shutdown()

    run(main())


def test_redeploy_serves_from_the_old_set_until_the_new_one_is_ready(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        await backend.deploy(replica_set("e", artifact(tmp_path, {})))
        (old,) = await wait_until(backend, "e", all_ready(1))
        await backend.deploy(replica_set("e", artifact(tmp_path, {"sleep": 1.0})))
        assert await pid_of_call(backend, "e") == old.pid  # no gap while the new one loads
        (new,) = await wait_until(backend, "e", all_ready(1), timeout=30)
        assert new.pid != old.pid
        await wait_gone([old.pid or 0])
        assert await pid_of_call(backend, "e") == new.pid
        await backend.shutdown()

    run(main())


def test_worker_errors_cancellations_and_streams_leave_the_worker_healthy(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        await backend.deploy(replica_set("e", artifact(tmp_path, {})))
        (status,) = await wait_until(backend, "e", all_ready(1))

        with pytest.raises(ModelportError, match="ValueError: echo was asked to raise") as info:
            await call(backend, "e", command("raise"))
        assert type(info.value) is ModelportError
        with pytest.raises(InvalidInput, match="echo says the input is invalid"):
            await call(backend, "e", command("invalid"))

        # A caller that gives up: its late answer must not reach the next caller.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call(backend, "e", command("sleep:0.3")), 0.05)
        other = {"x": np.full((1, 3), 7, dtype=np.float32)}
        np.testing.assert_array_equal((await call(backend, "e", other))["x"], other["x"])

        async with backend.lease("e", 5) as replica:
            assert [i async for i in replica.stream({"items": [1, "two", 3]})] == [1, "two", 3]
            items = replica.stream({"items": list(range(50)), "delay": 0.1})
            assert [await anext(items), await anext(items)] == [0, 1]
            await items.aclose()  # type: ignore[attr-defined]
            started = time.monotonic()
            # The stream was cancelled: a predict queued behind it runs right away.
            np.testing.assert_array_equal((await replica.predict(X, {}))["x"], X["x"])
            assert time.monotonic() - started < 1.0

        assert await pid_of_call(backend, "e") == status.pid
        assert backend.replicas("e")[0].restarts == 0
        await backend.shutdown()

    run(main())


def test_shutdown_leaves_no_worker_behind(tmp_path: Path) -> None:
    async def main() -> list[int]:
        backend = make_backend(tmp_path)
        await backend.deploy(replica_set("a", artifact(tmp_path, {}), replicas=2))
        await backend.deploy(replica_set("b", artifact(tmp_path, {"sleep": 30})))
        ready = await wait_until(backend, "a", all_ready(2))
        (loading,) = backend.replicas("b")
        pids = [r.pid for r in [*ready, loading] if r.pid]
        await backend.shutdown()
        assert backend.replicas("a") == []
        return pids

    pids = run(main())
    assert len(pids) == 3
    assert all(is_gone(pid) for pid in pids)
    assert (tmp_path / "data" / "run" / "logs" / "a.r1.log").exists()


def test_a_killed_server_takes_its_workers_with_it(tmp_path: Path) -> None:
    # The worker is busy loading for 30 s, so it cannot notice the closed socket itself:
    # only PR_SET_PDEATHSIG can end it.
    spec = artifact(tmp_path, {"sleep": 30})
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from modelport.backends.base import ReplicaSetSpec
        from modelport.backends.local import LocalBackend
        from modelport.runtimes.base import LoadSpec
        from modelport.settings import Settings

        async def main():
            backend = LocalBackend(Settings(data_dir=Path({str(tmp_path / "srv")!r})))
            spec = LoadSpec(runtime="echo", artifact_path=Path({str(spec.artifact_path)!r}),
                            artifact_name="echo.json", sha256={spec.sha256!r},
                            options={spec.options!r})
            await backend.deploy(ReplicaSetSpec("e", spec, 1, env={ENV!r}))
            while backend.replicas("e")[0].pid is None:
                await asyncio.sleep(0.01)
            print(backend.replicas("e")[0].pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, **ENV}
    )
    try:
        assert server.stdout is not None
        worker_pid = int(server.stdout.readline())
        time.sleep(0.5)  # let the worker get past start-up and into its long load
        assert not is_gone(worker_pid)
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    run(wait_gone([worker_pid], timeout=10))


def test_inspect_signature_loads_out_of_process(tmp_path: Path) -> None:
    async def main() -> None:
        # Model code printing on stdout must not spoil the answer.
        spec = artifact(tmp_path, {"print": "noise from the model"})
        assert await inspect_signature(spec, 30, ENV) == SIGNATURE

        given = Signature(inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])])
        spec_with = artifact(tmp_path, {})
        spec_with = LoadSpec(**{**spec_with.__dict__, "signature": given})
        assert await inspect_signature(spec_with, 30, ENV) == given

        corrupt = artifact(tmp_path, {})
        corrupt.artifact_path.write_text("{}  ")
        with pytest.raises(ArtifactCorrupted, match="corrupted"):
            await inspect_signature(corrupt, 30, ENV)
        with pytest.raises(ModelLoadError, match="no weights"):
            await inspect_signature(artifact(tmp_path, {"fail": "no weights"}), 30, ENV)
        with pytest.raises(UnsafeArtifact, match="trusted=True"):
            await inspect_signature(artifact(tmp_path, {}, name="model.pkl"), 30, ENV)
        with pytest.raises(ModelLoadError, match=r"SIGSEGV.*crashing while loading"):
            await inspect_signature(artifact(tmp_path, {"crash": True}), 30, ENV)
        started = time.monotonic()
        with pytest.raises(ModelLoadError, match="took longer than 1 s"):
            await inspect_signature(artifact(tmp_path, {"sleep": 30}), 1, ENV)
        assert time.monotonic() - started < 10

    run(main())
