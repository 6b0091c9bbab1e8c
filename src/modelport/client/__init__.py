"""The modelport Python SDK: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both speak to a modelport server over HTTP, parse responses into the wire models of
``modelport.types.admin`` and raise the ``modelport.errors`` class the server raised::

    from modelport.client import Client
    from modelport.errors import ModelNotFound

    with Client("http://127.0.0.1:8000") as client:
        client.push_model("iris.onnx", name="iris", runtime="onnx")
        client.deploy("iris")
        client.wait_ready("iris")
        client.predict("iris", [[5.1, 3.5, 1.4, 0.2]])
"""

from __future__ import annotations

from modelport.client.async_ import AsyncClient
from modelport.client.core import DEFAULT_URL
from modelport.client.files import Progress
from modelport.client.sync import Client

__all__ = ["DEFAULT_URL", "AsyncClient", "Client", "Progress"]
