"""The torch trainers: mlp, cnn, lstm, transformer, minilm_head.

Each one only says which architecture to build from its hyperparameters and the data
(``arch``); fitting is the shared epoch loop (``torch_loop``), the networks live in
``torch_models``. Export is ONNX through ``torch.onnx.export`` (dynamic batch axis, checked
against torch on a sample) and falls back to safetensors weights + the architecture JSON when
the exporter is missing or fails; both load with ``exported.load_predictor``.

torch is imported inside the methods: the API process imports this module for the
parameter schemas only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from modelport.training.table import Kind, Task
from modelport.training.trainers.base import (
    EpochParams,
    Exported,
    FitData,
    InputKind,
    TrainContext,
    Trainer,
    TrainerParams,
)

if TYPE_CHECKING:
    from modelport.training.trainers.torch_models import TrainedNet

log = logging.getLogger("modelport.training")

ONNX_FILE = "model.onnx"
WEIGHTS_FILE = "model.safetensors"
ARCH_FILE = "arch.json"
ONNX_CHECK_ATOL = 1e-4

Width = Annotated[int, Field(ge=1, le=65_536)]

# Known noise from torch.onnx.export (dynamo exporter) in torch 2.13: silenced there only.
_EXPORT_NOISE: list[tuple[type[Warning], str]] = [
    (FutureWarning, r".*_check_is_size.*"),
    (FutureWarning, r".*LeafSpec.*"),
    (UserWarning, r"The tensor attributes .*"),
    (UserWarning, r"The \.grad attribute of a Tensor that is not a leaf.*"),
]


class TorchTrainer(Trainer):
    """Fit with the shared loop, predict with torch, export to ONNX or safetensors."""

    epochs: ClassVar[bool] = True
    tasks: ClassVar[frozenset[Task]] = frozenset({"classification", "regression"})

    def __init__(self, params: TrainerParams) -> None:
        super().__init__(params)
        self._model: TrainedNet | None = None
        self._arch: dict[str, Any] = {}
        self._sample: np.ndarray | None = None

    @abstractmethod
    def arch(self, data: FitData) -> dict[str, Any]:
        """The JSON-able architecture (``torch_models.build_model``) for ``data``."""

    def fit(self, data: FitData, ctx: TrainContext) -> None:
        import torch

        from modelport.training.trainers import torch_loop
        from modelport.training.trainers.torch_models import build_model

        self.check_data(data)
        out_dim = data.n_classes if data.task == "classification" else 1
        arch = {**self.arch(data), "task": data.task, "out_dim": out_dim}
        torch_loop.set_threads(ctx.threads)
        torch.manual_seed(ctx.seed)
        model = build_model(arch)
        if data.task == "regression":
            y = np.asarray(data.y_train, dtype=np.float64)
            model.set_target_scale(float(y.mean()), float(y.std()))
        params = self.params
        assert isinstance(params, EpochParams)
        fingerprint = {
            "trainer": self.name,
            "params": params.model_dump(mode="json"),
            "arch": arch,
            "seed": ctx.seed,
            "rows": len(data.x_train),
            "val_rows": 0 if data.x_val is None else len(data.x_val),
        }
        torch_loop.train(model, data, params, ctx, fingerprint)
        self._model, self._arch = model, arch
        self._sample = np.ascontiguousarray(data.x_train[:4])

    def predict(self, x: np.ndarray) -> np.ndarray:
        from modelport.training.trainers import torch_loop

        return torch_loop.predict(self._fitted(), self._input(x))

    def export(self, dest: Path, *, onnx: bool = True) -> Exported:
        """ONNX when ``onnx`` and the exporter manages; else safetensors + arch JSON."""
        model = self._fitted()
        dest.mkdir(parents=True, exist_ok=True)
        if onnx:
            try:
                return self._export_onnx(model, dest)
            except Exception as exc:  # any exporter failure: the safetensors path still works
                log.warning("%s: ONNX export failed (%s); using safetensors", self.name, exc)
                (dest / ONNX_FILE).unlink(missing_ok=True)
        return self._export_safetensors(model, dest)

    def _manifest(self) -> dict[str, Any]:
        return {
            "input": "x",
            "output": "y",
            "input_dtype": "int64" if self.input_dtype == np.int64 else "float32",
            "flatten": False,
            "task": self._arch["task"],
            "n_classes": self._arch["out_dim"] if self._arch["task"] == "classification" else 0,
        }

    def _export_onnx(self, model: TrainedNet, dest: Path) -> Exported:
        import onnxruntime as ort
        import torch

        assert self._sample is not None
        sample = self._input(np.concatenate([self._sample, self._sample])[:4])
        path = dest / ONNX_FILE
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            for category, message in _EXPORT_NOISE:
                warnings.filterwarnings("ignore", message, category)
            torch.onnx.export(
                model.eval(),
                (torch.from_numpy(sample),),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["y"], {"x": sample[:3]})[0]
        want = self.predict(sample[:3])
        if not np.allclose(got.reshape(want.shape), want, atol=ONNX_CHECK_ATOL, rtol=1e-4):
            raise RuntimeError("the ONNX model's outputs differ from torch's")
        manifest = {"format": "onnx", "file": ONNX_FILE, **self._manifest()}
        return Exported(format="onnx", files=[ONNX_FILE], manifest=manifest)

    def _export_safetensors(self, model: TrainedNet, dest: Path) -> Exported:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(dest / WEIGHTS_FILE))
        (dest / ARCH_FILE).write_text(json.dumps(self._arch, indent=2))
        manifest = {
            "format": "safetensors",
            "weights": WEIGHTS_FILE,
            "arch": ARCH_FILE,
            **self._manifest(),
        }
        return Exported(format="safetensors", files=[WEIGHTS_FILE, ARCH_FILE], manifest=manifest)

    @property
    def input_dtype(self) -> type[np.generic]:
        return np.int64 if self._arch.get("type") in ("lstm", "transformer") else np.float32

    def _input(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def _fitted(self) -> TrainedNet:
        if self._model is None:
            raise RuntimeError(f"{self.name}: fit() first")
        return self._model


def _features(data: FitData) -> int:
    return int(np.prod(data.x_train.shape[1:]))


# --- mlp / minilm_head ----------------------------------------------------------------------


class MlpParams(EpochParams):
    epochs: int = Field(default=30, ge=1, le=10_000)
    hidden: list[Width] = Field(default_factory=lambda: [128, 64], max_length=16)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class MlpTrainer(TorchTrainer):
    name = "mlp"
    description = "Multi-layer perceptron (torch) on features, text embeddings or flat images."
    Params = MlpParams
    kinds: ClassVar[frozenset[Kind]] = frozenset({"tabular", "text", "image"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"features", "embeddings", "image"})

    def arch(self, data: FitData) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, MlpParams)
        return {"type": "mlp", "in_dim": _features(data), "hidden": p.hidden, "dropout": p.dropout}


class MinilmHeadParams(EpochParams):
    epochs: int = Field(default=30, ge=1, le=10_000)
    hidden: int = Field(default=128, ge=0, le=65_536, description="0: a linear head.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class MinilmHeadTrainer(TorchTrainer):
    name = "minilm_head"
    description = (
        "A small classifier/regressor head on MiniLM sentence embeddings "
        "(needs preprocessing.text = 'minilm')."
    )
    Params = MinilmHeadParams
    kinds: ClassVar[frozenset[Kind]] = frozenset({"text"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"embeddings"})

    def arch(self, data: FitData) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, MinilmHeadParams)
        hidden = [p.hidden] if p.hidden > 0 else []
        return {"type": "mlp", "in_dim": _features(data), "hidden": hidden, "dropout": p.dropout}


# --- cnn ------------------------------------------------------------------------------------


class CnnParams(EpochParams):
    epochs: int = Field(default=20, ge=1, le=10_000)
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [32, 64], min_length=1, max_length=8
    )
    kernel_size: int = Field(default=3, ge=1, le=11)
    hidden: int = Field(default=128, ge=0, le=65_536, description="0: no hidden dense layer.")
    dropout: float = Field(default=0.25, ge=0.0, lt=1.0)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd")
        return value


class CnnTrainer(TorchTrainer):
    name = "cnn"
    description = "Convolutional network (torch) for images."
    Params = CnnParams
    kinds: ClassVar[frozenset[Kind]] = frozenset({"image"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"image"})

    def arch(self, data: FitData) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, CnnParams)
        shape = data.image_shape or tuple(int(v) for v in data.x_train.shape[1:])
        return {
            "type": "cnn",
            "in_shape": list(shape),
            "channels": p.channels,
            "kernel_size": p.kernel_size,
            "hidden": p.hidden,
            "dropout": p.dropout,
        }


# --- lstm / transformer ---------------------------------------------------------------------


def _vocab(data: FitData) -> int:
    return int(data.vocab_size or int(data.x_train.max()) + 1)


class LstmParams(EpochParams):
    epochs: int = Field(default=10, ge=1, le=10_000)
    embedding_dim: int = Field(default=64, ge=1, le=4096)
    hidden: int = Field(default=64, ge=1, le=4096)
    layers: int = Field(default=1, ge=1, le=8)
    bidirectional: bool = True
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)


class LstmTrainer(TorchTrainer):
    name = "lstm"
    description = "LSTM text classifier/regressor (torch) on word tokens."
    Params = LstmParams
    kinds: ClassVar[frozenset[Kind]] = frozenset({"text"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"tokens"})

    def arch(self, data: FitData) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, LstmParams)
        return {
            "type": "lstm",
            "vocab_size": _vocab(data),
            **p.model_dump(include={"embedding_dim", "hidden", "layers", "bidirectional"}),
            "dropout": p.dropout,
        }


class TransformerParams(EpochParams):
    epochs: int = Field(default=10, ge=1, le=10_000)
    d_model: int = Field(default=64, ge=2, le=4096)
    heads: int = Field(default=4, ge=1, le=64)
    layers: int = Field(default=2, ge=1, le=24)
    dim_feedforward: int = Field(default=128, ge=1, le=65_536)
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    positional: bool = Field(default=True, description="Learned positional embeddings.")

    @field_validator("heads")
    @classmethod
    def _divides(cls, value: int, info: ValidationInfo) -> int:
        d_model = info.data.get("d_model")
        if isinstance(d_model, int) and d_model % value:
            raise ValueError(f"heads must divide d_model ({d_model})")
        return value


class TransformerTrainer(TorchTrainer):
    name = "transformer"
    description = "Small transformer encoder (torch) on word tokens, mean-pooled."
    Params = TransformerParams
    kinds: ClassVar[frozenset[Kind]] = frozenset({"text"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"tokens"})

    def arch(self, data: FitData) -> dict[str, Any]:
        p = self.params
        assert isinstance(p, TransformerParams)
        keys = {"d_model", "heads", "layers", "dim_feedforward", "dropout", "positional"}
        return {
            "type": "transformer",
            "vocab_size": _vocab(data),
            "seq_len": int(data.seq_len or data.x_train.shape[1]),
            **p.model_dump(include=keys),
        }
