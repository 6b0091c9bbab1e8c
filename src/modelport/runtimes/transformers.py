"""Hugging Face model folders on transformers / sentence-transformers, offline, on CPU.

The artifact is a model folder packed as a tar (``runtimes.unpack``); the worker unpacks it
once and loads it for the version's task, ``options["task"]``:

- ``embeddings`` (aliases ``feature-extraction``, ``sentence-similarity``): text BYTES
  [-1] → ``embedding`` FP32 [-1, dim], ``tokens`` INT64 [-1]. With sentence-transformers
  when the folder has ``modules.json`` (the model's own pooling and normalisation), else
  ``AutoModel`` with attention-masked mean pooling (``_hf_encoders``).
- ``text-classification``: text → ``label`` BYTES (``config.id2label``), ``score`` FP32,
  ``tokens`` INT64.
- ``text-generation``: ``AutoModelForCausalLM``, streamed (``_hf_generate``), plus
  ``text_input`` → ``text_output`` for V2.

Nothing is fetched and no code from the folder runs: ``local_files_only=True``,
``trust_remote_code=False``, and weights come from safetensors. A folder whose weights are
only pickles (``pytorch_model.bin`` and friends) runs code when loaded, so it is refused
unless the version is ``trusted``; that check reads only the archive's member names, so it
happens at registration in the API process. sentence-transformers imports the module
classes that ``modules.json`` names, so those must be sentence-transformers' own.

Options: ``task``, ``threads`` (torch threads, default 1), ``chat_template`` (a Jinja2
override for generation), ``cache_dir`` / ``max_unpacked_bytes`` (unpacking).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

from modelport.errors import InvalidInput, ModelLoadError, UnsafeArtifact
from modelport.runtimes.base import LoadSpec, Runtime, Tensors
from modelport.runtimes.safety import ArtifactFormat, sniff_format
from modelport.runtimes.text import CLASSIFICATION, EMBEDDINGS, GENERATION, TENSORS
from modelport.runtimes.unpack import check_archive, unpacked_dir
from modelport.types.admin import Signature

# task name (and aliases) -> canonical task; canonical task -> capability it serves
TASK_ALIASES: dict[str, str] = {
    "embeddings": "embeddings",
    "feature-extraction": "embeddings",
    "sentence-similarity": "embeddings",
    "text-classification": "text-classification",
    "text-generation": "text-generation",
}
TASK_CAPABILITY: dict[str, str] = {
    "embeddings": EMBEDDINGS,
    "text-classification": CLASSIFICATION,
    "text-generation": GENERATION,
}

# weight files that are pickles (torch.save) rather than safetensors
_PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def canonical_task(task: object) -> str:
    """The canonical name of ``task``; ``InvalidInput`` naming the known ones otherwise."""
    if isinstance(task, str) and task in TASK_ALIASES:
        return TASK_ALIASES[task]
    raise InvalidInput(
        f"the transformers runtime needs a task, one of {sorted(TASK_ALIASES)}; got {task!r}",
        param="task",
    )


class TransformersRuntime(Runtime):
    """Serves one Hugging Face model folder for one task (see the module docstring)."""

    name: ClassVar[str] = "transformers"
    # what the runtime can do over all tasks; one version serves TASK_CAPABILITY[task]
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {TENSORS, EMBEDDINGS, CLASSIFICATION, GENERATION}
    )

    def __init__(self, spec: LoadSpec) -> None:
        super().__init__(spec)
        self._model: Any = None  # an _hf_encoders or _hf_generate model
        self.task = ""

    @classmethod
    def check_artifact(cls, path: Path, artifact_name: str, *, trusted: bool) -> None:
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:  # looked up, not imported: this runs in the API process
            raise InvalidInput(
                f"the transformers runtime needs {' and '.join(missing)}; install modelport[llm]",
                param="runtime",
            )
        fmt = sniff_format(path, artifact_name)
        if fmt != ArtifactFormat.TAR:
            raise InvalidInput(
                "the transformers runtime loads a model folder packed as a tar archive "
                f"(modelport models push <folder>); {artifact_name!r} looks like {fmt.value!r}",
                param="runtime",
            )
        names = _strip_top_folder(check_archive(path, artifact_name))
        if "config.json" not in names:
            raise InvalidInput(
                f"artifact {artifact_name!r} has no config.json at its top; it is not a "
                "Hugging Face model folder",
                param="artifact",
            )
        if not trusted:
            _refuse_pickled_weights(names, artifact_name)

    def load(self) -> Signature:
        import torch

        spec = self.spec
        self.task = canonical_task(spec.options.get("task"))
        torch.set_num_threads(int(spec.options.get("threads", 1)))
        _quiet_transformers()
        root = unpacked_dir(spec)
        if not spec.trusted:
            _check_sentence_transformers_modules(root)
        try:
            self._model = _build(self.task, root, spec.options, spec.trusted)
        except (InvalidInput, ModelLoadError):
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            # transformers reports a broken or incomplete folder with these
            raise ModelLoadError(
                f"transformers cannot load {spec.artifact_name!r} for {self.task}: {exc}"
            ) from exc
        derived: Signature = self._model.signature
        if spec.signature is not None and spec.signature != derived:
            raise ModelLoadError(
                f"the declared signature does not match the {self.task} signature "
                f"{derived.model_dump()}"
            )
        self._signature = derived
        return derived

    def predict(self, inputs: Tensors, params: Mapping[str, Any] | None = None) -> Tensors:
        outputs: Tensors = self._model.predict(inputs, params or {})
        return outputs

    def stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if self.task != "text-generation":
            raise InvalidInput(f"a {self.task} model does not generate text", param="model")
        events: Iterator[dict[str, Any]] = self._model.stream(payload)
        return events

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the model's tokenizer makes them (special tokens too)."""
        ids: list[int] = self._model.tokenizer(text)["input_ids"]
        return ids

    def unload(self) -> None:
        self._model = None


def _build(task: str, root: Path, options: Mapping[str, Any], trusted: bool) -> Any:
    if task == "text-generation":
        from modelport.runtimes._hf_generate import CausalLM

        return CausalLM(root, options, trusted)
    from modelport.runtimes._hf_encoders import Classifier, Embedder

    if task == "embeddings":
        return Embedder(root, trusted)
    return Classifier(root, trusted)


def _quiet_transformers() -> None:
    """No progress bars or hub chatter in replica logs."""
    from transformers.utils import logging

    hf_logging: Any = logging  # its functions carry no type hints
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _strip_top_folder(names: list[str]) -> list[str]:
    """Member names relative to the single top-level folder, when there is one."""
    tops = {PurePosixPath(n).parts[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        top = tops.pop()
        return [n[len(top) + 1 :] for n in names]
    return names


def _refuse_pickled_weights(names: list[str], artifact_name: str) -> None:
    """``UnsafeArtifact`` if some folder's weights exist only as pickles."""
    folders: dict[str, set[str]] = {}
    for name in names:
        path = PurePosixPath(name)
        folders.setdefault(str(path.parent), set()).add(path.name)
    for folder, files in sorted(folders.items()):
        pickled = sorted(f for f in files if f.endswith(_PICKLE_WEIGHTS))
        if pickled and not any(f.endswith(".safetensors") for f in files):
            where = "" if folder == "." else f" in {folder}/"
            raise UnsafeArtifact(
                f"artifact {artifact_name!r} has weights{where} only as pickles "
                f"({', '.join(pickled)}), which run arbitrary code when loaded. Save the "
                "model with save_pretrained(safe_serialization=True), or register it with "
                "trusted=True (CLI: --trusted) if you trust its author",
                param="trusted",
            )


def _check_sentence_transformers_modules(root: Path) -> None:
    """Refuse a ``modules.json`` naming classes outside sentence-transformers.

    sentence-transformers imports each module's class by the dotted name in that file, so
    an untrusted folder could otherwise make the worker import any installed module.
    """
    path = root / "modules.json"
    if not path.is_file():
        return
    try:
        modules = json.loads(path.read_text(encoding="utf-8"))
        types = [str(m["type"]) for m in modules]
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(f"modules.json is malformed: {exc}") from exc
    foreign = [t for t in types if not t.startswith("sentence_transformers.")]
    if foreign:
        raise UnsafeArtifact(
            f"modules.json names classes outside sentence-transformers ({', '.join(foreign)});"
            " register the model with trusted=True if you trust its author",
            param="trusted",
        )
