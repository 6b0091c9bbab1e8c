"""The OpenAI-compatible API under ``/v1``: one module per endpoint.

``protocol`` holds the wire models and request checks, ``sampling`` the shared translation
to engine generation requests, ``sse`` the event-stream response that stops generation when
the client leaves. Errors render in OpenAI's shape (``api.errors``).
"""

from __future__ import annotations

from fastapi import APIRouter

from modelport.api.openai import chat, completions, embeddings, models

router = APIRouter()
for _module in (models, embeddings, chat, completions):
    router.include_router(_module.router)
