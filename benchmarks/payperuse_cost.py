"""Where pay-per-use's cost per request goes: CPU µs of each layer, in-process, no HTTP.

``w1_metering.py`` measures the cost as req/s through a real server, which on a shared
2-core VM drifts by more than the effect (single rounds range 0.65-1.04). This script
measures the same layers as process CPU time around a trivial inference app that answers
at once and emits its usage event like the real handlers do, so neither the model, the
HTTP server nor the neighbours' load is in the figure. Same services as the server
(SQLite in a temporary data dir, the platform admin key). Layers are added one at a time:

- bare app (its usage hub as with pay-per-use off: recent events and Prometheus);
- + auth (API key, scope, request context);
- + rate limits (the fused gate; the admin key has no limits, so only the checks run);
- + metering on the event loop (budget check, the send wrapper, pricing, the journal line),
  with the usage writer idle (its flush interval made longer than the run);
- the writer's own cost per record, measured by one flush of everything journaled.

Each figure is the minimum of several repeats (CPU time only grows under noise). The last
line prints the whole stack's CPU per request as a ratio of the bare app's.

    .venv/bin/python -m benchmarks.payperuse_cost [--requests 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH_ADMIN_KEY

ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    os.environ.update(
        {
            "MODELPORT_ADMIN_KEY": BENCH_ADMIN_KEY,
            "MODELPORT_METERING_FLUSH_MS": str(10**9),  # the writer stays idle: timed apart
        }
    )
    asyncio.run(_run(args.requests, args.repeats))


async def _run(n: int, repeats: int) -> None:
    from modelport.api.auth import AuthMiddleware
    from modelport.api.limits import LimitsMiddleware
    from modelport.api.metering import MeteringMiddleware
    from modelport.engine.principal import CURRENT
    from modelport.engine.services import build_services
    from modelport.engine.usage import UsageEvent, take_compute_ms
    from modelport.settings import Settings

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="mp-ppu-")) / "data")
    services = build_services(settings)
    services.database.migrate()
    services.accounts.ensure_admin_key(settings)
    services.accounts.load()
    await services.accounts.start()
    services.meter.start()
    body = b'{"model_name":"iris","outputs":[{"name":"label","datatype":"INT64","data":[0]}]}'
    out_headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        context = CURRENT.get()
        request_id = context.request_id if context is not None else "anonymous"
        event = UsageEvent(request_id, "iris", 1, "inference", 0, 0, 0, rows=1,
                           compute_ms=take_compute_ms())  # fmt: skip
        services.usage.emit(event)
        await send({"type": "http.response.start", "status": 200, "headers": out_headers})
        await send({"type": "http.response.body", "body": body})

    headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {BENCH_ADMIN_KEY}".encode())]  # fmt: skip
    scope = {"type": "http", "method": "POST", "path": "/v2/models/iris/infer",
             "headers": headers, "query_string": b"", "client": ("127.0.0.1", 1)}  # fmt: skip
    message = {"type": "http.request", "body": b'{"inputs":[]}', "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_message: dict[str, Any]) -> None:
        return None

    async def once(asgi: ASGI) -> float:
        start = time.process_time()
        for _ in range(n):
            await asgi(dict(scope), receive, send)  # layers write into the scope
        return (time.process_time() - start) / n * 1e6

    hub = services.usage._subscribers  # what the server subscribes beyond the built-ins
    everything, builtins = list(hub), list(hub)[:2]  # recent events + Prometheus
    limiter, max_bytes = services.limits, settings.max_request_bytes
    layers: dict[str, tuple[ASGI, list[Any]]] = {
        "bare": (app, builtins),
        "auth": (AuthMiddleware(app, services, None), builtins),
        "limits": (AuthMiddleware(LimitsMiddleware(app, limiter, max_bytes), services, None),
                   builtins),
        "metering": (AuthMiddleware(LimitsMiddleware(MeteringMiddleware(app, services.meter),
                                                     limiter, max_bytes), services, None),
                     everything),
    }  # fmt: skip
    best = dict.fromkeys(layers, float("inf"))
    for _ in range(repeats):  # round-robin, so a drift in the VM's speed hits every layer
        for name, (asgi, subscribers) in layers.items():
            hub[:] = subscribers
            best[name] = min(best[name], await once(asgi))
    hub[:] = everything
    bare, auth, limits, metered = best["bare"], best["auth"], best["limits"], best["metering"]
    start = time.process_time()
    written = services.meter.flush()
    writer = (time.process_time() - start) / max(written, 1) * 1e6
    services.meter.stop()
    await services.accounts.stop()
    services.close()
    total = metered + writer
    print(f"Pay-per-use CPU per request, in-process, min of {repeats} x {n} requests")
    print(f"bare app                      {bare:6.2f} us")
    print(f"+ auth                        {auth - bare:+6.2f} us")
    print(f"+ rate limits                 {limits - auth:+6.2f} us")
    print(f"+ metering (event loop)       {metered - limits:+6.2f} us")
    print(f"+ usage writer, per record    {writer:+6.2f} us  ({written} records in one flush)")
    print(f"PAY-PER-USE COST: {total - bare:.1f} us per request on top of the bare app's "
          f"{bare:.1f} us (whole stack = {total / bare:.2f}x); through a real server W1 "
          f"spends ~250-300 us of one core per request")  # fmt: skip


if __name__ == "__main__":
    main()
