"""Causal-LM generation for the transformers runtime: a token loop with a KV cache.

A plain loop rather than ``model.generate`` so that each token is yielded the moment it
exists, a closed stream stops the loop at once, and sampling follows the OpenAI API's
knobs exactly (``SamplingParams``): presence/frequency penalties over the generated tokens
(OpenAI's formula), then temperature (0 means greedy, i.e. argmax, as ``generate`` with
``do_sample=False``), then nucleus (top_p) sampling with a seeded ``torch.Generator``.

Events follow ``runtimes.text``. Text is detokenized incrementally (a piece is sent once
it decodes to whole characters) and held back while it could be the start of a stop
string; tokens ride on the piece they complete, and the tokens of a stop string whose text
is cut ride on an empty last piece, so the deltas always add up to ``completion_tokens``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.runtimes._hf_encoders import load_kwargs, load_model
from modelport.runtimes.base import Tensors
from modelport.runtimes.gguf import sampling_from_params
from modelport.runtimes.text import GenerationRequest, SamplingParams
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    import torch

SIGNATURE = Signature(
    inputs=[TensorSpec(name="text_input", datatype="BYTES", shape=[-1])],
    outputs=[TensorSpec(name="text_output", datatype="BYTES", shape=[-1])],
)


class CausalLM:
    """One causal language model and its tokenizer."""

    signature = SIGNATURE

    def __init__(self, root: Path, options: Mapping[str, Any], trusted: bool) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = load_kwargs(root, trusted)
        self.tokenizer = AutoTokenizer.from_pretrained(
            str(root), local_files_only=True, trust_remote_code=False
        )
        self._model = load_model(AutoModelForCausalLM, root, kwargs)
        self._template: str | None = options.get("chat_template") or getattr(
            self.tokenizer, "chat_template", None
        )
        config = self._model.config
        self._context = int(
            getattr(config, "max_position_embeddings", None)
            or getattr(config, "n_positions", None)
            or 2048
        )
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self._eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])

    def prompt_ids(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens: chat messages through the chat template, or the raw text."""
        if request.messages is None:
            ids: list[int] = self.tokenizer(request.prompt or "")["input_ids"]
            return ids
        if not self._template:
            raise InvalidInput(
                "this model has no chat template; use completions, or register it with a "
                "chat_template",
                param="messages",
            )
        from jinja2 import TemplateError

        try:
            text = self.tokenizer.apply_chat_template(
                request.messages,
                chat_template=self._template,
                add_generation_prompt=True,
                tokenize=False,
            )
        except (TemplateError, ValueError) as exc:
            raise InvalidInput(f"the chat template failed: {exc}", param="messages") from exc
        # the template writes the special tokens (BOS...) itself
        chat_ids: list[int] = self.tokenizer(str(text), add_special_tokens=False)["input_ids"]
        return chat_ids

    def stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        request = GenerationRequest.from_payload(payload)
        if (request.prompt is None) == (request.messages is None):
            raise InvalidInput("give exactly one of prompt and messages", param="messages")
        prompt = self.prompt_ids(request)
        if not prompt:
            raise InvalidInput("the prompt is empty", param="prompt")
        if len(prompt) >= self._context:
            raise InvalidInput(
                f"the prompt has {len(prompt)} tokens; the model's context is {self._context}",
                param="messages" if request.messages is not None else "prompt",
            )
        return self._events(prompt, request.params)

    def predict(self, inputs: Tensors, params: Mapping[str, Any]) -> Tensors:
        sampling = sampling_from_params(params)
        texts = []
        for item in inputs["text_input"].ravel():
            prompt = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            payload = GenerationRequest(params=sampling, prompt=prompt).to_payload()
            events = self.stream(payload)
            texts.append("".join(e["text"] for e in events if e["type"] == "delta"))
        return {"text_output": np.array(texts, dtype=object)}

    def _events(self, prompt: list[int], params: SamplingParams) -> Iterator[dict[str, Any]]:
        yield {"type": "start", "prompt_tokens": len(prompt)}
        text = _TextAssembler(self.tokenizer, params.stop)
        finish = "length"
        sent = generated = 0
        tail: str | None = None  # the text before a stop string, once one is hit
        for token in self._tokens(prompt, params):
            if token in self._eos:
                finish = "stop"
                break
            generated += 1
            piece, stopped = text.push(token)
            if stopped:
                finish, tail = "stop", piece
                break
            if piece:
                yield {"type": "delta", "text": piece, "tokens": generated - sent}
                sent = generated
        if tail is None:
            tail = text.flush()
        if tail or generated > sent:
            yield {"type": "delta", "text": tail, "tokens": generated - sent}
            sent = generated
        yield {"type": "end", "finish_reason": finish, "completion_tokens": sent}

    def _tokens(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        """Sampled tokens, one model step each, until ``max_tokens`` or the context ends."""
        import torch

        seed = params.seed if params.seed is not None else random.getrandbits(63)
        generator = torch.Generator().manual_seed(seed)
        counts: Counter[int] = Counter()
        step_input = torch.tensor([prompt], dtype=torch.long)
        past: Any = None
        for _ in range(min(params.max_tokens, self._context - len(prompt))):
            with torch.inference_mode():
                out = self._model(input_ids=step_input, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = _sample(out.logits[0, -1].float(), params, counts, generator)
            counts[token] += 1
            yield token
            step_input = torch.tensor([[token]], dtype=torch.long)


def _sample(
    logits: torch.Tensor,
    params: SamplingParams,
    counts: Counter[int],
    generator: torch.Generator,
) -> int:
    import torch

    if counts and (params.presence_penalty or params.frequency_penalty):
        ids = torch.tensor(list(counts), dtype=torch.long)
        seen = torch.tensor(list(counts.values()), dtype=logits.dtype)
        logits = logits.clone()
        logits[ids] -= seen * params.frequency_penalty + params.presence_penalty
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        before = torch.cumsum(ordered, dim=-1) - ordered  # mass of the tokens ranked above
        ordered[before >= params.top_p] = 0.0  # keep the smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter_(0, order, ordered)
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextAssembler:
    """Incremental detokenization with stop strings held back and cut."""

    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._decoded = ""  # the text of self._ids, as far as it decoded to whole characters
        self._pending = ""  # decoded text not sent yet
        self._stops = stops

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (text safe to send now, whether a stop string was hit)."""
        self._ids.append(token)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more tokens
            return "", False
        self._pending += text[len(self._decoded) :]
        self._decoded = text
        hits = [self._pending.find(s) for s in self._stops if s in self._pending]
        if hits:
            piece = self._pending[: min(hits)]
            self._pending = ""
            return piece, True
        keep = _held_back(self._pending, self._stops)
        piece = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(piece) :]
        return piece, False

    def flush(self) -> str:
        """Whatever is left at the end (no stop string came): held text, partial chars."""
        text = self._decode(self._ids)
        rest = self._pending + text[len(self._decoded) :]
        self._pending = ""
        self._decoded = text
        return rest

    def _decode(self, ids: list[int]) -> str:
        decoded: str = self._tokenizer.decode(ids, skip_special_tokens=True)
        return decoded


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that begins some stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest
