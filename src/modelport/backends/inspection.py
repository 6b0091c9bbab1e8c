"""Read a model's signature in a throw-away worker process, never in the server process.

The worker (``python -m modelport.backends.worker --inspect``) reads a load spec on stdin,
loads the model and writes its signature on stdout, or the error as JSON with exit code 3.
"""

from __future__ import annotations

import asyncio
import json
import os

from modelport.backends.protocol import load_spec_to_dict
from modelport.backends.replica import TAIL_LINES, WORKER, describe_exit, terminate, worker_env
from modelport.errors import ModelLoadError, ModelportError
from modelport.runtimes.base import LoadSpec
from modelport.types.admin import Signature

_EXIT_LOAD_FAILED = 3


async def inspect_signature(
    spec: LoadSpec,
    timeout: float,  # noqa: ASYNC109 - the engine's documented call signature
    env: dict[str, str] | None = None,
) -> Signature:
    """Load ``spec`` in a throw-away worker process and return the model's signature.

    Raises the worker's own error (``ArtifactCorrupted``, ``UnsafeArtifact``,
    ``ModelLoadError``...) or ``ModelLoadError`` when the worker crashes or times out.
    """
    process = await asyncio.create_subprocess_exec(
        *WORKER,
        "--inspect",
        "--parent-pid",
        str(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=worker_env(env or {}),
    )
    request = json.dumps(load_spec_to_dict(spec)).encode()
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate(request)
    except TimeoutError:
        raise ModelLoadError(
            f"reading the signature of {spec.artifact_name!r} took longer than {timeout:g} s"
        ) from None
    finally:
        await terminate(process)
    if process.returncode == 0:
        return Signature.model_validate_json(out)
    if process.returncode == _EXIT_LOAD_FAILED:
        raise ModelportError.from_dict(json.loads(out))
    tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-TAIL_LINES:])
    raise ModelLoadError(
        f"the worker reading {spec.artifact_name!r} {describe_exit(process.returncode)}"
        + (f"; last stderr: {tail}" if tail else "")
    )
