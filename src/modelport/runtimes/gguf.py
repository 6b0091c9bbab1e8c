"""GGUF language models on llama.cpp (llama-cpp-python), for completions and chat.

Generation is llama-cpp-python's own ``create_completion`` / ``create_chat_completion``
with ``stream=True``: sampling, stop strings, UTF-8 handling and BOS insertion are exactly
what a user of llama-cpp-python gets, so with temperature 0 a served answer equals an
in-process one (:func:`llama_kwargs` gives the settings both use). This module adds the
``runtimes.text`` event stream on top, with exact token counts: the prompt as llama.cpp
evaluates it and every generated token (end-of-generation tokens aside, like
llama-cpp-python's own ``usage``), read off the token generator itself.

Chat prompts are rendered with the model's chat template: the GGUF metadata's
``tokenizer.chat_template`` through llama-cpp-python's Jinja2 formatter, or the Jinja2
template in ``options["chat_template"]``. A model with neither refuses chat requests rather
than guess a format it was not trained on.

Each request starts from an empty KV cache (``options["prefix_cache"]`` keeps llama.cpp's
prefix reuse instead), so an answer depends on its request only, not on what the replica
served before.

Threads: llama.cpp's CPU backend runs on OpenMP, whose idle threads by default spin for
a while (``GOMP_SPINCOUNT``, 300,000 turns, ~12 ms on this VM) after each parallel part.
After the prompt's multi-threaded evaluation that spin holds a core exactly when the API
server needs it to forward the first token (on 2 cores: +2.5 ms time-to-first-token over
150 paired rounds, benchmarks/llm_stream.py). libgomp reads the variable once, when it
loads, so the worker gets it in its environment from the start (:meth:`worker_env`; a warm
spare imports llama.cpp before it knows its model); ``options["omp_spincount"]`` changes
it, and a ``GOMP_SPINCOUNT`` in the server's own environment is left to the workers.

Options: ``n_ctx`` (2048, rounded up to a multiple of 256), ``threads`` (generation, 1),
``threads_batch`` (prompt, 2), ``chat_template``, ``prefix_cache`` (false),
``omp_spincount`` (3000).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from modelport.errors import InvalidInput, ModelLoadError
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, sniff_format
from modelport.runtimes.text import (
    GENERATION,
    TENSORS,
    GenerationRequest,
    SamplingParams,
)
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    from llama_cpp import Llama

# OpenAI's sampling knobs are temperature and top_p; llama.cpp's extra samplers are switched
# off so those two mean what they mean in the OpenAI API.
FIXED_SAMPLING: dict[str, Any] = {"top_k": 0, "min_p": 0.0, "typical_p": 1.0, "repeat_penalty": 1.0}
# Long enough for the spin between two steps of one evaluation, short enough to free the core
# soon after it (see the module docstring); measured by benchmarks/llm_stream.py.
OMP_SPINCOUNT = 3000


def tune_openmp(spincount: int = OMP_SPINCOUNT) -> None:
    """Shorten OpenMP's idle spin for this process unless the environment already set it.

    Takes effect only before libgomp loads (it reads the variable once): call it before
    importing ``llama_cpp``. The benchmark calls it too, so both sides run alike.
    """
    os.environ.setdefault("GOMP_SPINCOUNT", str(spincount))


SIGNATURE = Signature(
    inputs=[TensorSpec(name="text_input", datatype="BYTES", shape=[-1])],
    outputs=[TensorSpec(name="text_output", datatype="BYTES", shape=[-1])],
)


def llama_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for llama-cpp-python's ``create_(chat_)completion`` for ``params``.

    Tests and benchmarks pass the same to an in-process ``Llama`` to compare answers.
    """
    return {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "seed": params.seed,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        **FIXED_SAMPLING,
    }


def sampling_from_params(params: Mapping[str, Any] | None) -> SamplingParams:
    """``SamplingParams`` from V2 request parameters; other parameters are left alone.

    Raises ``InvalidInput`` naming the parameter when a value has the wrong type or range.
    """
    values: dict[str, Any] = {}
    for f in fields(SamplingParams):
        if params is None or params.get(f.name) is None:
            continue
        values[f.name] = _coerce(f.name, params[f.name])
    return SamplingParams(**values)


_RANGES: dict[str, tuple[float, float]] = {
    "max_tokens": (1, 1 << 20),
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def _coerce(name: str, value: Any) -> Any:
    if name == "stop":
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise InvalidInput("stop must be a non-empty string or a list of them", param=name)
        return stops
    integral = name in ("max_tokens", "seed")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"{name} must be a number, got {value!r}", param=name)
    if integral and value != int(value):
        raise InvalidInput(f"{name} must be an integer, got {value!r}", param=name)
    low, high = _RANGES.get(name, (-(2**63), 2**64 - 1))
    if not low <= value <= high or (name == "top_p" and value == 0):
        raise InvalidInput(f"{name}={value!r} is out of range [{low}, {high}]", param=name)
    return int(value) if integral else float(value)


class GgufRuntime(Runtime):
    """Serves one GGUF model: streamed generation and a batch ``text_input`` path."""

    name: ClassVar[str] = "gguf"
    capabilities: ClassVar[frozenset[str]] = frozenset({TENSORS, GENERATION})

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._llm: Any = None  # a _CountingLlama; Any since its class is built lazily
        self._chat = False
        self._prefix_cache = bool(spec.options.get("prefix_cache", False))

    @classmethod
    def worker_env(cls, options: Mapping[str, Any]) -> dict[str, str]:
        if "omp_spincount" not in options and "GOMP_SPINCOUNT" in os.environ:
            return {}  # the operator's own setting reaches the workers as it is
        try:
            return {"GOMP_SPINCOUNT": str(_spincount(options))}
        except ModelLoadError:
            return {}  # load() refuses the option with this error

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        if importlib.util.find_spec("llama_cpp") is None:  # looked up, not imported
            raise InvalidInput(
                "the gguf runtime needs llama-cpp-python; install modelport[llm]",
                param="runtime",
            )
        fmt = sniff_format(path, artifact_name)
        if fmt != ArtifactFormat.GGUF:
            raise InvalidInput(
                f"the gguf runtime loads GGUF files; {artifact_name!r} looks like {fmt.value!r}",
                param="runtime",
            )

    def load(self) -> Signature:
        options = self.spec.options
        tune_openmp(_spincount(options))  # in-process use; a worker has it from the start
        llama_class = _counting_llama_class()
        try:
            self._llm = llama_class(
                model_path=str(self.spec.artifact_path),
                n_ctx=_context_size(int(options.get("n_ctx", 2048))),
                n_threads=int(options.get("threads", 1)),
                n_threads_batch=int(options.get("threads_batch", 2)),
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:  # llama.cpp's "failed to load model"
            raise ModelLoadError(
                f"llama.cpp cannot load {self.spec.artifact_name!r}: {exc}"
            ) from exc
        self._chat = self._set_chat_template(options.get("chat_template"))
        if self.spec.signature is not None and self.spec.signature != SIGNATURE:
            raise ModelLoadError(
                f"the gguf runtime serves {SIGNATURE.model_dump()}; a different signature "
                "was declared"
            )
        self._signature = SIGNATURE
        return SIGNATURE

    def _set_chat_template(self, override: str | None) -> bool:
        """Install the override template; True when chat has a template to render with."""
        llm = self._llm
        if override is None:
            # llama-cpp-python picked a handler from the GGUF metadata's template, if any
            return "tokenizer.chat_template" in llm.metadata
        from jinja2 import TemplateError
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def token_text(token: int) -> str:
            return str(llm._model.token_get_text(token)) if token != -1 else ""

        try:
            formatter = Jinja2ChatFormatter(
                template=str(override),
                eos_token=token_text(llm.token_eos()),
                bos_token=token_text(llm.token_bos()),
                stop_token_ids=[llm.token_eos()],
            )
        except TemplateError as exc:
            raise ModelLoadError(f"the chat_template option is not valid Jinja2: {exc}") from exc
        llm.chat_handler = formatter.to_chat_handler()
        return True

    def tokenize(self, text: str) -> list[int]:
        """The tokens ``create_completion`` evaluates for the raw prompt ``text``.

        Mirrors llama-cpp-python: the BOS (or CLS) token when the model asks for one,
        special tokens in the text parsed as such, and the EOS (or SEP) token when the
        model asks for that.
        """
        llm = self._llm
        model = llm._model
        bos = model.token_cls() if model.token_cls() != -1 else llm.token_bos()
        sep = model.token_sep()
        tokens: list[int] = [bos] if model.add_bos_token() and bos != -1 else []
        if text:
            tokens += llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if model.add_eos_token() or sep != -1:
            tokens.append(sep if sep != -1 else llm.token_eos())
        return tokens

    @property
    def generated_tokens(self) -> int:
        """Tokens generated since load, over all requests (end-of-generation tokens aside)."""
        return int(self._llm.generated_total) if self._llm is not None else 0

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        kwargs = llama_kwargs(sampling_from_params(params))
        texts = []
        for item in inputs["text_input"].ravel():
            prompt = item.decode("utf-8") if isinstance(item, bytes) else str(item)
            self._before_request()
            result = _call("text_input", self._llm.create_completion, prompt, **kwargs)
            texts.append(result["choices"][0]["text"])
        return {"text_output": np.array(texts, dtype=object)}

    def stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        request = GenerationRequest.from_payload(payload)
        if (request.prompt is None) == (request.messages is None):
            raise InvalidInput("give exactly one of prompt and messages", param="messages")
        kwargs = llama_kwargs(request.params)
        llm = self._llm
        self._before_request()
        if request.messages is None:
            chunks = _call("prompt", llm.create_completion, request.prompt, stream=True, **kwargs)
            return self._events(chunks, chat=False)
        if not self._chat:
            raise InvalidInput(
                f"model {self.spec.artifact_name!r} has no chat template (GGUF metadata "
                "tokenizer.chat_template); use completions, or register it with a "
                "chat_template",
                param="messages",
            )
        chunks = _call(
            "messages", llm.create_chat_completion, messages=request.messages, stream=True, **kwargs
        )
        return self._events(chunks, chat=True)

    def _before_request(self) -> None:
        if not self._prefix_cache:
            self._llm.reset()  # start from an empty KV cache: see the module docstring

    def _events(
        self, chunks: Generator[dict[str, Any], None, None], *, chat: bool
    ) -> Generator[dict[str, Any], None, None]:
        """Turn llama-cpp-python's chunks into start/delta/end events with token counts.

        Tokens generated since the last delta ride on the next piece of text, or on the
        final chunk (as an empty delta) when their text was held back and then cut by a stop
        string; so the deltas' tokens always add up to the end event's count.
        """
        llm = self._llm
        try:
            chunk = _call("messages" if chat else "prompt", next, chunks, None)
            yield {"type": "start", "prompt_tokens": int(llm.prompt_tokens)}
            sent = 0
            finish = "length"
            while chunk is not None:
                choice = chunk["choices"][0]
                text = (choice["delta"].get("content") if chat else choice["text"]) or ""
                last = bool(choice.get("finish_reason"))
                if last:
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
                tokens = int(llm.completion_tokens) - sent
                if text or (last and tokens):
                    sent += tokens
                    yield {"type": "delta", "text": text, "tokens": tokens}
                chunk = next(chunks, None)
            yield {"type": "end", "finish_reason": finish, "completion_tokens": sent}
        finally:
            chunks.close()  # a closed consumer (cancel) stops llama.cpp right here

    def unload(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


def _spincount(options: Mapping[str, Any]) -> int:
    """The ``omp_spincount`` option (default ``OMP_SPINCOUNT``); a bad one: ModelLoadError."""
    value = options.get("omp_spincount", OMP_SPINCOUNT)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ModelLoadError(f"option omp_spincount must be an integer >= 0, got {value!r}")
    return value


def _context_size(requested: int) -> int:
    """``requested`` rounded up to a multiple of 256, the size llama.cpp really allocates.

    llama-cpp-python sizes its own token buffer by the requested value, so a context that
    llama.cpp rounded up would let a long prompt pass its length check and then overflow.
    """
    return max(1, -(-requested // 256)) * 256


def _call(param: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a llama-cpp-python call, turning its input errors into ``InvalidInput``."""
    from jinja2 import TemplateError

    try:
        return fn(*args, **kwargs)
    except ValueError as exc:  # prompt longer than n_ctx; raise_exception() in a template
        raise InvalidInput(str(exc), param=param) from exc
    except TemplateError as exc:
        raise InvalidInput(f"the chat template failed: {exc}", param=param) from exc


def _counting_llama_class() -> type[Llama]:
    """A ``Llama`` that counts the prompt and generated tokens of the current request.

    ``Llama.generate`` is the one place every token passes through, for completions and
    chat alike, so counting there is exact without reimplementing any of the sampling.
    """
    from llama_cpp import Llama, llama_vocab_is_eog

    class _CountingLlama(Llama):
        prompt_tokens = 0
        completion_tokens = 0
        generated_total = 0

        def generate(  # type: ignore[override]
            self, tokens: Sequence[int], *args: Any, **kwargs: Any
        ) -> Iterator[int]:
            self.prompt_tokens = len(tokens)
            self.completion_tokens = 0
            vocab = self._model.vocab
            try:
                for token in super().generate(tokens, *args, **kwargs):
                    if not llama_vocab_is_eog(vocab, token):  # as create_completion counts
                        self.completion_tokens += 1
                        self.generated_total += 1
                    yield token
            finally:
                # Each generate builds a new llama.cpp sampler chain (vocabulary-sized
                # buffers: ~3 MB for Gemma's 262k tokens) whose Python wrapper sits in a
                # reference cycle, so only the cyclic GC would free it: a process grew by
                # ~130 MB over 80 requests between collections. Free it now.
                sampler, self._sampler = self._sampler, None
                if sampler is not None:
                    sampler.close()

    return _CountingLlama
