"""The contract between the engine and text runtimes (LLMs, embedding models).

Two paths cross the worker boundary, both as plain Python values (the IPC channel only
carries plain values and numpy arrays):

* **Tensors** (``Runtime.predict``), batched by the adaptive batcher — embeddings and
  classification. Text goes in as a V2 ``BYTES`` tensor named ``text`` ([-1]); with
  ``params["input_format"] == "token_ids"`` each element instead holds little-endian int32
  token ids (OpenAI's token-array input). Embedding models answer ``embedding`` FP32
  [-1, dim] and ``tokens`` INT64 [-1] (tokens counted per row by the model's own
  tokenizer, for exact usage); classifiers answer ``label`` BYTES [-1], ``score`` FP32 [-1]
  and ``tokens``. Generators answer ``text_output`` BYTES [-1] for a ``text_input`` BYTES
  [-1] (Triton's names), one greedy/sampled completion per row, with params as below.

* **Streams** (``Runtime.stream``), one request at a time — generation. The payload is a
  ``GenerationRequest.to_payload()`` dict; the runtime yields ``StreamEvent`` dicts:
  first ``{"type": "start", "prompt_tokens": n}``, then ``{"type": "delta", "text": s,
  "tokens": k}`` (``k`` tokens produced that piece), then ``{"type": "end",
  "finish_reason": "stop" | "length", "completion_tokens": n}``. The worker checks for a
  cancel between events, so a closed client stops generation within a token.

Token counts come from the model's own tokenizer, never estimated: the engine turns them into
OpenAI ``usage`` and into one usage event per request (counting only deltas actually sent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

# Capability names a runtime declares in ``Runtime.capabilities``.
TENSORS = "tensors"  # plain predict on named tensors (every runtime)
EMBEDDINGS = "embeddings"
CLASSIFICATION = "classification"
GENERATION = "generation"


@dataclass(frozen=True)
class SamplingParams:
    """Generation settings, already validated by the API layer."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One completion to generate: a raw ``prompt`` or chat ``messages`` (exactly one)."""

    params: SamplingParams
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None

    def to_payload(self) -> dict[str, Any]:
        # A shallow copy, not ``asdict``: its recursive deep copy costs ~25 us on every
        # generation's way to the worker, where the payload is pickled right away anyway.
        params = {**vars(self.params), "stop": list(self.params.stop)}
        return {"prompt": self.prompt, "messages": self.messages, "params": params}

    @staticmethod
    def from_payload(payload: dict[str, Any]) -> GenerationRequest:
        return GenerationRequest(
            params=SamplingParams(**payload["params"]),
            prompt=payload.get("prompt"),
            messages=payload.get("messages"),
        )


class StartEvent(TypedDict):
    type: Literal["start"]
    prompt_tokens: int


class DeltaEvent(TypedDict):
    type: Literal["delta"]
    text: str
    tokens: int


class EndEvent(TypedDict):
    type: Literal["end"]
    finish_reason: Literal["stop", "length"]
    completion_tokens: int


StreamEvent = StartEvent | DeltaEvent | EndEvent
