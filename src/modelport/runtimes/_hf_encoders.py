"""Encoder tasks of the transformers runtime: embeddings and text classification.

Both take the ``text`` BYTES tensor of ``runtimes.text``: UTF-8 strings, or with
``params["input_format"] == "token_ids"`` little-endian int32 token ids per element. Token
ids are the text's tokens *without* special tokens (what OpenAI clients send, what
``tokenizer(text, add_special_tokens=False)`` gives); the model's special tokens are added
as for text, so both forms of one input give the same result. ``tokens`` counts what the
model actually read per row: special tokens included, after truncation to its maximum
length.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelport.errors import InvalidInput, ModelLoadError
from modelport.runtimes.base import Tensors
from modelport.types.admin import Signature, TensorSpec

if TYPE_CHECKING:
    import torch

TEXT = "text"
_PARAM = "input"  # what the OpenAI API calls the text; errors name it


def load_kwargs(root: Path, trusted: bool) -> dict[str, Any]:
    """Offline, no remote code, and safetensors weights unless the version is trusted."""
    safetensors = any(root.glob("*.safetensors"))
    kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
    if safetensors or not trusted:
        kwargs["use_safetensors"] = True
    return kwargs


def load_model(auto_class: Any, root: Path, kwargs: dict[str, Any]) -> Any:
    """``auto_class.from_pretrained`` in eval mode, refusing weights the folder lacks.

    transformers fills missing weights (a classification head on a bare encoder, say) with
    random values and only logs it; serving such a model would answer noise, so it fails
    to load instead, naming the missing weights.
    """
    model, info = auto_class.from_pretrained(str(root), output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or []) + sorted(
        str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or []
    )
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ModelLoadError(
            f"the folder has no (or mis-shaped) weights for {len(missing)} parameter(s) of "
            f"{type(model).__name__}: {shown}; is it a model for this task?"
        )
    model.eval()
    return model


class _Encoder:
    """Tokenization shared by the encoder tasks: text or token ids in, padded tensors out."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._prefix, self._suffix = _special_tokens_around(tokenizer)
        self._wants_token_types = "token_type_ids" in tokenizer.model_input_names

    def features(self, inputs: Tensors, params: Mapping[str, Any]) -> dict[str, Any]:
        """Model inputs for the batch: from text, or from token ids (``input_format``)."""
        items = inputs[TEXT].ravel()
        fmt = params.get("input_format", "text")
        if fmt == "token_ids":
            return self.id_features([self._ids(item, row) for row, item in enumerate(items)])
        if fmt != "text":
            raise InvalidInput(
                f"input_format must be 'text' or 'token_ids', got {fmt!r}", param="input_format"
            )
        return self.text_features([_text(item, row) for row, item in enumerate(items)])

    def _ids(self, item: Any, row: int) -> list[int]:
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        if not raw or len(raw) % 4:
            raise InvalidInput(
                f"input {row}: token ids must be a non-empty run of int32 values "
                f"(got {len(raw)} bytes)",
                param=_PARAM,
            )
        ids = np.frombuffer(raw, dtype="<i4")
        vocab = len(self.tokenizer)
        if ids.min() < 0 or ids.max() >= vocab:
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise InvalidInput(
                f"input {row}: token id {bad} is outside the model's vocabulary [0, {vocab})",
                param=_PARAM,
            )
        return [int(i) for i in ids]

    def text_features(self, texts: list[str]) -> dict[str, Any]:
        features: dict[str, Any] = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(features)

    def id_features(self, rows: list[list[int]]) -> dict[str, Any]:
        """Padded tensors for token-id rows, special tokens added, truncated like text."""
        import torch

        room = max(self.max_length - len(self._prefix) - len(self._suffix), 1)
        seqs = [self._prefix + ids[:room] + self._suffix for ids in rows]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        left = self.tokenizer.padding_side == "left"
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, seq in enumerate(seqs):
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[i, span] = torch.tensor(seq)
            mask[i, span] = 1
        features: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._wants_token_types:
            features["token_type_ids"] = torch.zeros_like(ids)
        return features


class Embedder(_Encoder):
    """Sentence embeddings: sentence-transformers when the folder is one, else mean pooling."""

    def __init__(self, root: Path, trusted: bool) -> None:
        kwargs = load_kwargs(root, trusted)
        self._st: Any = None
        self._model: Any = None
        if (root / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(
                str(root),
                device="cpu",
                local_files_only=True,
                trust_remote_code=False,
                model_kwargs={k: v for k, v in kwargs.items() if k == "use_safetensors"},
            )
            self._st.eval()
            super().__init__(self._st.tokenizer, int(self._st.max_seq_length))
            self._extras = _non_tensor_values(self._st.preprocess(["probe"]))
            dim = int(self._st.get_embedding_dimension())
        else:
            from transformers import AutoModel, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(root), **_tokenizer_kwargs(kwargs))
            self._model = load_model(AutoModel, root, kwargs)
            super().__init__(tokenizer, _max_length(tokenizer, self._model.config))
            self._extras = {}
            dim = int(self._model.config.hidden_size)
        self.signature = Signature(
            inputs=[TensorSpec(name=TEXT, datatype="BYTES", shape=[-1])],
            outputs=[
                TensorSpec(name="embedding", datatype="FP32", shape=[-1, dim]),
                TensorSpec(name="tokens", datatype="INT64", shape=[-1]),
            ],
        )

    def text_features(self, texts: list[str]) -> dict[str, Any]:
        if self._st is None:
            return super().text_features(texts)
        features: dict[str, Any] = self._st.preprocess(texts)  # its own truncation, casing
        return features

    def id_features(self, rows: list[list[int]]) -> dict[str, Any]:
        return {**super().id_features(rows), **self._extras}

    def predict(self, inputs: Tensors, params: Mapping[str, Any]) -> Tensors:
        import torch

        features = self.features(inputs, params)
        tokens = features["attention_mask"].sum(dim=1).numpy().astype(np.int64)
        with torch.inference_mode():
            if self._st is not None:
                embedding = self._st(features)["sentence_embedding"]
            else:
                names = self.tokenizer.model_input_names
                hidden = self._model(**{k: v for k, v in features.items() if k in names})
                embedding = _mean_pool(hidden.last_hidden_state, features["attention_mask"])
        return {"embedding": embedding.float().numpy(), "tokens": tokens}


class Classifier(_Encoder):
    """Sequence classification: the top label of ``config.id2label`` and its probability."""

    def __init__(self, root: Path, trusted: bool) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        kwargs = load_kwargs(root, trusted)
        tokenizer = AutoTokenizer.from_pretrained(str(root), **_tokenizer_kwargs(kwargs))
        self._model = load_model(AutoModelForSequenceClassification, root, kwargs)
        config = self._model.config
        super().__init__(tokenizer, _max_length(tokenizer, config))
        self._labels = [str(config.id2label[i]) for i in range(config.num_labels)]
        self._multi_label = config.problem_type == "multi_label_classification"
        self.signature = Signature(
            inputs=[TensorSpec(name=TEXT, datatype="BYTES", shape=[-1])],
            outputs=[
                TensorSpec(name="label", datatype="BYTES", shape=[-1]),
                TensorSpec(name="score", datatype="FP32", shape=[-1]),
                TensorSpec(name="tokens", datatype="INT64", shape=[-1]),
            ],
        )

    def predict(self, inputs: Tensors, params: Mapping[str, Any]) -> Tensors:
        import torch

        features = self.features(inputs, params)
        tokens = features["attention_mask"].sum(dim=1).numpy().astype(np.int64)
        names = self.tokenizer.model_input_names
        with torch.inference_mode():
            logits = self._model(**{k: v for k, v in features.items() if k in names}).logits
        logits = logits.float()
        if len(self._labels) == 1:  # one output: a regression score, not a probability
            scores, best = logits[:, 0], torch.zeros(len(logits), dtype=torch.long)
        else:
            probs = logits.sigmoid() if self._multi_label else logits.softmax(dim=-1)
            scores, best = probs.max(dim=-1)
        labels = np.array([self._labels[int(i)] for i in best], dtype=object)
        return {"label": labels, "score": scores.numpy().astype(np.float32), "tokens": tokens}


def _text(item: Any, row: int) -> str:
    if isinstance(item, str):
        return item
    try:
        return bytes(item).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {row} is not valid UTF-8 text", param=_PARAM) from None


def _tokenizer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("local_files_only", "trust_remote_code")}


def _max_length(tokenizer: Any, config: Any) -> int:
    """The longest input the model takes: the tokenizer's limit, capped by the positions."""
    limits = [int(tokenizer.model_max_length)]
    for name in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, name, None), int):
            limits.append(int(getattr(config, name)))
    return min(limits)


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text."""
    probe = "hello"
    plain: list[int] = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full: list[int] = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _non_tensor_values(features: Mapping[str, Any]) -> dict[str, Any]:
    """Markers sentence-transformers puts next to the tensors (e.g. the input modality)."""
    import torch

    return {k: v for k, v in features.items() if not isinstance(v, torch.Tensor)}


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
