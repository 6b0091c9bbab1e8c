"""Small HTTP helpers shared by integration tests (raw httpx: they test the wire)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import httpx
import numpy as np

from modelport.runtimes.base import LoadSpec, Runtime, runtime_class
from tests.integration.server_process import TEST_ADMIN_KEY

# What the tests send to authenticate as the platform admin (see ``ServerProcess``). Read-only:
# some clients (tritonclient) add their own entries to the headers dict they are given.
AUTH: Mapping[str, str] = MappingProxyType({"Authorization": f"Bearer {TEST_ADMIN_KEY}"})


def push(url: str, path: Path, name: str, runtime: str, **extra: Any) -> dict[str, Any]:
    """Upload an artifact and register it as a new version of ``name``."""
    with path.open("rb") as fh:
        art = httpx.post(f"{url}/api/artifacts", content=fh.read(), timeout=60, headers=AUTH)
    art.raise_for_status()
    body = {
        "artifact_sha256": art.json()["sha256"],
        "artifact_name": path.name,
        "runtime": runtime,
        **extra,
    }
    resp = httpx.post(f"{url}/api/models/{name}/versions", json=body, timeout=120, headers=AUTH)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def deploy(url: str, model: str, timeout: float = 90.0, **spec: Any) -> dict[str, Any]:
    """Deploy and wait until the deployment is ready."""
    resp = httpx.post(
        f"{url}/api/deployments", json={"model": model, **spec}, timeout=60, headers=AUTH
    )
    assert resp.status_code == 201, resp.text
    return wait_state(url, model, "ready", timeout)


def wait_state(url: str, name: str, state: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/api/deployments/{name}", timeout=10, headers=AUTH).json()
        if status.get("state") == state:
            return status
        time.sleep(0.1)
    raise AssertionError(f"deployment {name} not {state} in {timeout}s: {status}")


def served_runtime(data_dir: Path, url: str, model: str, version: str = "latest") -> Runtime:
    """Load, in this process, the exact artifact the server serves for ``model``."""
    info = httpx.get(
        f"{url}/api/models/{model}/versions/{version}", timeout=10, headers=AUTH
    ).json()
    sha = info["artifact_sha256"]
    path = data_dir / "artifacts" / "sha256" / sha[:2] / sha
    spec = LoadSpec(
        runtime=info["runtime"],
        artifact_path=path,
        artifact_name=info["artifact_name"],
        sha256=sha,
        trusted=info["trusted"],
    )
    runtime = runtime_class(info["runtime"])(spec)
    runtime.load()
    return runtime


def metric_value(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` matching ``labels`` in /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def iris_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform([4.0, 2.0, 1.0, 0.1], [8.0, 4.5, 7.0, 2.5], size=(n, 4)).astype(np.float32)


def served_artifact(data_dir: Path, url: str, model: str, version: str = "latest") -> Path:
    """The artifact file the server keeps for ``model`` (content-addressed, in its data dir)."""
    info = httpx.get(
        f"{url}/api/models/{model}/versions/{version}", timeout=10, headers=AUTH
    ).json()
    sha = info["artifact_sha256"]
    return data_dir / "artifacts" / "sha256" / sha[:2] / sha


def served_llama(data_dir: Path, url: str, model: str, *, chat_template: bool = False) -> Any:
    """The GGUF file the server serves for ``model``, in llama-cpp-python with the
    deployment's settings: its ``n_ctx``, one thread (two for the prompt) and, with
    ``chat_template``, its chat template as the chat handler. The caller closes it."""
    from llama_cpp import Llama

    options = httpx.get(f"{url}/api/deployments/{model}", timeout=10, headers=AUTH).json()[
        "options"
    ]
    llm = Llama(
        model_path=str(served_artifact(data_dir, url, model)),
        n_ctx=int(options["n_ctx"]),
        n_threads=1,
        n_threads_batch=2,
        verbose=False,
    )
    if chat_template:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:
            return llm.detokenize([token], special=True).decode()

        llm.chat_handler = Jinja2ChatFormatter(
            template=options["chat_template"],
            eos_token=text(llm.token_eos()),
            bos_token=text(llm.token_bos()),
            stop_token_ids=[llm.token_eos()],
        ).to_chat_handler()
    return llm


def start_env(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with (later putenv calls not included)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
