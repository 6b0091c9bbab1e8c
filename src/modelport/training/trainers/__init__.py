"""The trainer registry: names → Trainer classes, hyperparameter validation, trainer infos.

Trainer modules are imported by name on first use (like ``runtimes.RUNTIMES``) and import
their ML libraries (scikit-learn, torch) only inside methods, so the API process can list
trainers and validate hyperparameters cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from modelport.errors import InvalidInput
from modelport.training.trainers.base import (
    EpochParams,
    Exported,
    FitData,
    InputKind,
    TrainContext,
    Trainer,
    TrainerParams,
    TrainingCancelled,
)
from modelport.types.training import TrainerInfo

__all__ = [
    "TRAINERS",
    "EpochParams",
    "Exported",
    "FitData",
    "InputKind",
    "TrainContext",
    "Trainer",
    "TrainerParams",
    "TrainingCancelled",
    "trainer_class",
    "trainer_infos",
    "validate_params",
]

_CLASSIC = "modelport.training.trainers.classic"
_TORCH = "modelport.training.trainers.torch_trainers"

# Trainer name -> "module:Class"; modules are imported when a trainer is asked for.
TRAINERS: dict[str, str] = {
    "linear_regression": f"{_CLASSIC}:LinearRegressionTrainer",
    "logistic_regression": f"{_CLASSIC}:LogisticRegressionTrainer",
    "random_forest": f"{_CLASSIC}:RandomForestTrainer",
    "gradient_boosting": f"{_CLASSIC}:GradientBoostingTrainer",
    "mlp": f"{_TORCH}:MlpTrainer",
    "cnn": f"{_TORCH}:CnnTrainer",
    "lstm": f"{_TORCH}:LstmTrainer",
    "transformer": f"{_TORCH}:TransformerTrainer",
    "minilm_head": f"{_TORCH}:MinilmHeadTrainer",
}


def trainer_class(name: str) -> type[Trainer]:
    """The Trainer class called ``name``; unknown names are InvalidInput listing the known."""
    target = TRAINERS.get(name)
    if target is None:
        raise InvalidInput(
            f"unknown trainer {name!r}; available: {', '.join(TRAINERS)}", param="trainer"
        )
    module, _, attr = target.partition(":")
    cls: type[Trainer] = getattr(importlib.import_module(module), attr)
    return cls


def validate_params(name: str, raw: Mapping[str, Any] | None) -> TrainerParams:
    """``raw`` hyperparameters checked against trainer ``name``'s schema, defaults filled in.

    Errors are InvalidInput naming the field, e.g. "params.lr: Input should be greater than 0".
    """
    cls = trainer_class(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise InvalidInput("params must be a JSON object", param="params")
    try:
        return cls.Params.model_validate(dict(raw))
    except ValidationError as exc:
        problems: list[str] = []
        first = "params"
        for error in exc.errors(include_url=False):
            field = ".".join(["params", *(str(part) for part in error["loc"])])
            first = first if problems else field
            problems.append(f"{field}: {error['msg']}")
        raise InvalidInput("; ".join(problems), param=first) from None


def trainer_infos() -> list[TrainerInfo]:
    """Every trainer's name, description, accepted data and hyperparameter schema."""
    infos = []
    for name in TRAINERS:
        cls = trainer_class(name)
        infos.append(
            TrainerInfo(
                name=cls.name,
                description=cls.description,
                kinds=sorted(cls.kinds),
                tasks=sorted(cls.tasks),
                epochs=cls.epochs,
                params_schema=cls.Params.model_json_schema(),
            )
        )
    return infos
