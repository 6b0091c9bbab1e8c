"""Helpers for the training integration tests: a generated CSV, uploads, waiting on runs."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np

FINISHED = {"succeeded", "failed", "cancelled"}
COLORS = ("red", "green", "blue")


def churn_rows(n: int, seed: int = 0) -> list[tuple[float | None, float, str | None, str]]:
    """Rows (a, b, color, label) with a learnable label and a few missing values."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[float | None, float, str | None, str]] = []
    for i in range(n):
        a, b = float(rng.normal()), float(rng.normal())
        color = COLORS[int(rng.integers(0, 3))]
        label = "yes" if a + 0.5 * b + (1.0 if color == "red" else -0.3) > 0.2 else "no"
        rows.append(
            (None if i % 23 == 5 else round(a, 5), round(b, 5), None if i % 31 == 7 else color,
             label)
        )  # fmt: skip
    return rows


def churn_csv(n: int = 300, seed: int = 0) -> bytes:
    lines = ["a,b,color,churned"]
    for a, b, color, label in churn_rows(n, seed):
        lines.append(f"{'' if a is None else a},{b},{color or ''},{label}")
    return ("\n".join(lines) + "\n").encode()


def upload(client: httpx.Client, data: bytes) -> str:
    resp = client.post("/api/artifacts", content=data)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["sha256"])


def create_dataset(client: httpx.Client, data: bytes, **body: Any) -> httpx.Response:
    return client.post("/api/datasets", json={"artifact_sha256": upload(client, data), **body})


def start_run(client: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = client.post("/api/runs", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def wait_run(
    client: httpx.Client, run_id: int, until: set[str] | None = None, timeout: float = 240.0
) -> dict[str, Any]:
    """Poll a run until its status is in ``until`` (default: finished)."""
    wanted = until or FINISHED
    deadline = time.monotonic() + timeout
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        info = client.get(f"/api/runs/{run_id}").json()
        if info.get("status") in wanted:
            return info
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} not {wanted} in {timeout}s: {info}")


def wait_epoch(client: httpx.Client, run_id: int, epoch: int, timeout: float = 240.0) -> None:
    """Poll until the run has reported epoch ``epoch`` (fails if it finishes first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get(f"/api/runs/{run_id}").json()
        if info["progress"]["epoch"] >= epoch:
            return
        assert info["status"] not in FINISHED, info
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} did not reach epoch {epoch} in {timeout}s")


def sse_events(client: httpx.Client, run_id: int, timeout: float = 240.0) -> list[dict[str, Any]]:
    """Every event of ``GET /api/runs/{id}/events`` (the stream ends with the run)."""
    events: list[dict[str, Any]] = []
    with client.stream("GET", f"/api/runs/{run_id}/events", timeout=timeout) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                import json

                event = json.loads(line[6:])
                assert event["type"] == name
                events.append(event)
    return events
