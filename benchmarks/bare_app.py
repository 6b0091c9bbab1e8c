"""The baseline: a minimal FastAPI endpoint calling the same model in-process.

It speaks just enough V2 JSON (one FP32 input, outputs as JSON) to take the same requests
as modelport, with none of modelport's machinery: no registry, no worker process, no
batching, no validation beyond what the model itself needs.

    python benchmarks/bare_app.py --runtime sklearn --artifact PATH --name model.skops --port N
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

from modelport.runtimes.base import LoadSpec, runtime_class
from modelport.types.admin import Signature


def build(runtime: str, artifact: Path, name: str, signature: Signature | None) -> FastAPI:
    model = runtime_class(runtime)(
        LoadSpec(
            runtime=runtime,
            artifact_path=artifact,
            artifact_name=name,
            sha256="-",
            signature=signature,
        )
    )
    model.load()
    app = FastAPI()

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        req = orjson.loads(await request.body())
        inp = req["inputs"][0]
        x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
        out = model.predict({inp["name"]: x})
        return Response(
            orjson.dumps(
                {
                    "model_name": model_name,
                    "outputs": [
                        {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.ravel()}
                        for k, v in out.items()
                    ],
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            ),
            media_type="application/json",
        )

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--signature", help="JSON signature (TorchScript needs one)")
    args = parser.parse_args()
    signature = Signature.model_validate_json(args.signature) if args.signature else None
    app = build(args.runtime, args.artifact, args.name, signature)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


if __name__ == "__main__":
    main()
