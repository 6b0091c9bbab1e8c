"""scikit-learn trainers: linear/logistic regression, random forest, gradient boosting.

They fit in one call (no epochs, no checkpoints: a restarted job simply fits again, which is
quick for these models) and export to ONNX with skl2onnx, so serving needs onnxruntime, not
pickle. Image and embedding inputs are flattened to one feature vector per row.

scikit-learn, threadpoolctl and skl2onnx are imported inside the methods: this module is
imported by the API process for the trainers' parameter schemas.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from modelport.errors import InvalidInput
from modelport.training.table import Kind, Task
from modelport.training.trainers.base import (
    Exported,
    FitData,
    InputKind,
    TrainContext,
    Trainer,
    TrainerParams,
    TrainingCancelled,
    flat,
)

MODEL_FILE = "model.onnx"


class SklearnTrainer(Trainer):
    """Shared fit/predict/export of the scikit-learn trainers."""

    kinds: ClassVar[frozenset[Kind]] = frozenset({"tabular", "text", "image"})
    input_kinds: ClassVar[frozenset[InputKind]] = frozenset({"features", "embeddings", "image"})
    epochs: ClassVar[bool] = False

    def __init__(self, params: TrainerParams) -> None:
        super().__init__(params)
        self._model: Any = None
        self._task: Task = "classification"
        self._n_classes = 0
        self._dim = 0

    @abstractmethod
    def estimator(self, task: Task, seed: int, threads: int) -> Any:
        """A fresh, unfitted scikit-learn estimator for ``task``."""

    def fit(self, data: FitData, ctx: TrainContext) -> None:
        self.check_data(data)
        if ctx.should_stop():
            raise TrainingCancelled()
        x = flat(data.x_train)
        y = data.y_train
        if data.task == "classification":
            _check_all_classes(y, data.n_classes)
        threads = ctx.threads or 0
        model = self.estimator(data.task, ctx.seed, threads)
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        with threadpool_limits(limits=threads or None), warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            model.fit(x, y.astype(np.int64 if data.task == "classification" else np.float64))
        for warning in w:  # e.g. ConvergenceWarning: the user should see it, not a crash
            ctx.log(f"{self.name}: {warning.message}")
        ctx.log(f"{self.name}: fitted on {len(x)} rows x {x.shape[1]} features")
        self._model, self._task = model, data.task
        self._n_classes, self._dim = data.n_classes, x.shape[1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        model = self._fitted()
        rows = flat(x)
        if self._task == "classification":
            return np.asarray(model.predict_proba(rows), dtype=np.float32)
        return np.asarray(model.predict(rows), dtype=np.float32).reshape(-1)

    def export(self, dest: Path) -> Exported:
        model = self._fitted()
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        options = {id(model): {"zipmap": False}} if self._task == "classification" else None
        onx = convert_sklearn(
            model, initial_types=[("x", FloatTensorType([None, self._dim]))], options=options
        )
        _rename_output(onx, "probabilities" if self._task == "classification" else "variable")
        # skl2onnx names each graph with a random uuid; a fixed name keeps the same seed's
        # export byte-identical, so the same training gives the same content-addressed artifact.
        onx.graph.name = self.name
        dest.mkdir(parents=True, exist_ok=True)
        (dest / MODEL_FILE).write_bytes(onx.SerializeToString())
        manifest = {
            "format": "onnx",
            "file": MODEL_FILE,
            "input": "x",
            "output": "y",
            "input_dtype": "float32",
            "flatten": True,
            "task": self._task,
            "n_classes": self._n_classes,
            "feature_dim": self._dim,
        }
        return Exported(format="onnx", files=[MODEL_FILE], manifest=manifest)

    def _fitted(self) -> Any:
        if self._model is None:
            raise RuntimeError(f"{self.name}: fit() first")
        return self._model


def _check_all_classes(y: np.ndarray, n_classes: int) -> None:
    """scikit-learn only knows the classes it saw; every class must be in the training split."""
    missing = sorted(set(range(n_classes)) - {int(v) for v in np.unique(y)})
    if missing:
        raise InvalidInput(
            f"the training split has no rows of class index {missing[:10]}; every class needs "
            "training rows (use a larger dataset or a stratified split)",
            param="split",
        )


def _rename_output(onx: Any, name: str) -> None:
    """Make ``name`` the model's only output, called "y" (drops the label output)."""
    for node in onx.graph.node:
        for i, out in enumerate(node.output):
            if out == name:
                node.output[i] = "y"
    keep = [o for o in onx.graph.output if o.name == name]
    if len(keep) != 1:
        raise RuntimeError(f"skl2onnx produced no output {name!r}")
    keep[0].name = "y"
    del onx.graph.output[:]
    onx.graph.output.extend(keep)


# --- the trainers -------------------------------------------------------------------------


class LinearRegressionParams(TrainerParams):
    alpha: float = Field(
        default=0.0, ge=0.0, le=1e6, description="L2 penalty; 0: ordinary least squares."
    )
    fit_intercept: bool = True


class LinearRegressionTrainer(SklearnTrainer):
    name = "linear_regression"
    description = "Linear least squares (ridge when alpha > 0); scikit-learn, exported to ONNX."
    Params = LinearRegressionParams
    tasks: ClassVar[frozenset[Task]] = frozenset({"regression"})

    def estimator(self, task: Task, seed: int, threads: int) -> Any:
        from sklearn.linear_model import LinearRegression, Ridge

        p = self.params
        assert isinstance(p, LinearRegressionParams)
        if p.alpha > 0:
            return Ridge(alpha=p.alpha, fit_intercept=p.fit_intercept)
        return LinearRegression(fit_intercept=p.fit_intercept)


class LogisticRegressionParams(TrainerParams):
    C: float = Field(default=1.0, gt=0.0, le=1e6, description="Inverse L2 regularization.")
    max_iter: int = Field(default=1000, ge=1, le=100_000)


class LogisticRegressionTrainer(SklearnTrainer):
    name = "logistic_regression"
    description = "Logistic regression (L2, lbfgs); scikit-learn, exported to ONNX."
    Params = LogisticRegressionParams
    tasks: ClassVar[frozenset[Task]] = frozenset({"classification"})

    def estimator(self, task: Task, seed: int, threads: int) -> Any:
        from sklearn.linear_model import LogisticRegression

        p = self.params
        assert isinstance(p, LogisticRegressionParams)
        return LogisticRegression(C=p.C, max_iter=p.max_iter, random_state=seed)


class RandomForestParams(TrainerParams):
    n_estimators: int = Field(default=100, ge=1, le=2000)
    max_depth: int | None = Field(default=None, ge=1, le=100, description="null: unlimited.")
    min_samples_leaf: int = Field(default=1, ge=1, le=10_000)


class RandomForestTrainer(SklearnTrainer):
    name = "random_forest"
    description = "Random forest (classification or regression); scikit-learn, exported to ONNX."
    Params = RandomForestParams
    tasks: ClassVar[frozenset[Task]] = frozenset({"classification", "regression"})

    def estimator(self, task: Task, seed: int, threads: int) -> Any:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        p = self.params
        assert isinstance(p, RandomForestParams)
        cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return cls(
            n_estimators=p.n_estimators,
            max_depth=p.max_depth,
            min_samples_leaf=p.min_samples_leaf,
            random_state=seed,
            n_jobs=threads or -1,
        )


class GradientBoostingParams(TrainerParams):
    n_estimators: int = Field(default=100, ge=1, le=5000)
    learning_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    max_depth: int = Field(default=3, ge=1, le=32)
    subsample: float = Field(default=1.0, gt=0.0, le=1.0)


class GradientBoostingTrainer(SklearnTrainer):
    name = "gradient_boosting"
    description = (
        "Gradient-boosted trees (classification or regression); scikit-learn "
        "GradientBoosting, exported to ONNX."
    )
    Params = GradientBoostingParams
    tasks: ClassVar[frozenset[Task]] = frozenset({"classification", "regression"})

    def estimator(self, task: Task, seed: int, threads: int) -> Any:
        # not HistGradientBoosting: skl2onnx 1.20 cannot convert its classifier
        from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

        p = self.params
        assert isinstance(p, GradientBoostingParams)
        cls = GradientBoostingClassifier if task == "classification" else GradientBoostingRegressor
        return cls(
            n_estimators=p.n_estimators,
            learning_rate=p.learning_rate,
            max_depth=p.max_depth,
            subsample=p.subsample,
            random_state=seed,
        )
