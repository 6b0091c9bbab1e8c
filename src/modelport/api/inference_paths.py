"""Which requests are inference calls: the one definition the pay-per-use layers share.

Auth (the ``inference`` scope), rate limits and metering all act on the same calls: the V2
``infer`` and V1 ``:predict`` POSTs (model in the path) and the OpenAI embeddings, chat and
completions POSTs (model in the JSON body). ``inference_target`` classifies a request once
and keeps the answer in its ASGI scope, so the layers after the first read it for free.
"""

from __future__ import annotations

import re

from starlette.types import Scope

# Inference paths whose model is in the path.
_MODEL_IN_PATH = (
    re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/[^/]+)?/infer$"),
    re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/[^/:]+)?:predict$"),
)
# OpenAI inference paths: the model is in the JSON body.
MODEL_IN_BODY = frozenset({"/v1/embeddings", "/v1/chat/completions", "/v1/completions"})
_SCOPE_KEY = "modelport.inference"
_NOT_INFERENCE: tuple[bool, str | None] = (False, None)


# POST path -> classification: a server sees few distinct paths, so the regexes run once per
# path, not per request (cleared when full, so odd paths cannot make it grow without bound).
_SEEN: dict[str, tuple[bool, str | None]] = {}
_SEEN_MAX = 4096


def classify(method: str, path: str) -> tuple[bool, str | None]:
    """Whether ``method path`` is an inference call, and its model when the path names it."""
    if method != "POST":
        return _NOT_INFERENCE
    found = _SEEN.get(path)
    if found is None:
        found = _classify_post(path)
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[path] = found
    return found


def _classify_post(path: str) -> tuple[bool, str | None]:
    if path in MODEL_IN_BODY:
        return True, None
    for pattern in _MODEL_IN_PATH:
        match = pattern.match(path)
        if match is not None:
            return True, match.group("model")
    return _NOT_INFERENCE


def inference_target(scope: Scope) -> tuple[bool, str | None]:
    """``classify`` for an ASGI request, computed once per request (kept in its scope)."""
    found: tuple[bool, str | None] | None = scope.get(_SCOPE_KEY)
    if found is None:
        if scope["type"] == "http":
            found = classify(scope["method"], scope["path"])
        else:
            found = _NOT_INFERENCE
        scope[_SCOPE_KEY] = found
    return found
