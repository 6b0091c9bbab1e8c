"""Adaptive batching through the real server: many callers, one model call, own rows back."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np

from tests.integration.helpers import AUTH, deploy, iris_rows, metric_value, served_runtime
from tests.integration.server_process import ServerProcess

CALLERS = 96


async def _call_all(url: str, rows: np.ndarray) -> list[dict[str, list[float]]]:
    limits = httpx.Limits(max_connections=CALLERS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60, headers=AUTH) as client:

        async def one(i: int) -> dict[str, list[float]]:
            body = {
                "id": str(i),
                "inputs": [
                    {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": rows[i].tolist()}
                ],
            }
            resp = await client.post("/v2/models/iris/infer", json=body)
            assert resp.status_code == 200, resp.text
            data = resp.json()
            assert data["id"] == str(i)
            return {o["name"]: o["data"] for o in data["outputs"]}

        return await asyncio.gather(*(one(i) for i in range(CALLERS)))


def test_concurrent_callers_get_their_own_rows(live_server: ServerProcess) -> None:
    url = live_server.url
    # A wide latency window so merging is certain even on a loaded CI machine.
    deploy(url, "iris", replicas=1, max_batch_size=32, max_latency_ms=50)
    before_count = metric_value(url, "modelport_batch_size_count", model="iris")
    before_sum = metric_value(url, "modelport_batch_size_sum", model="iris")

    rows = iris_rows(CALLERS, seed=42)
    answers = asyncio.run(_call_all(url, rows))

    expected = served_runtime(live_server.data_dir, url, "iris").predict({"input": rows})
    for i, answer in enumerate(answers):
        assert answer["label"] == [int(expected["label"][i])]
        # Labels are exact; probabilities may differ in the last bits because BLAS sums a
        # row differently depending on the batch it sits in.
        np.testing.assert_allclose(
            np.asarray(answer["probabilities"], dtype=np.float32),
            expected["probabilities"][i],
            rtol=1e-5,
            atol=1e-7,
        )

    batches = metric_value(url, "modelport_batch_size_count", model="iris") - before_count
    rows_seen = metric_value(url, "modelport_batch_size_sum", model="iris") - before_sum
    assert rows_seen == CALLERS
    assert batches < CALLERS, f"no merging happened: {batches} batches for {CALLERS} rows"
    deploy(url, "iris", replicas=1, max_batch_size=64, max_latency_ms=2)  # demo defaults
