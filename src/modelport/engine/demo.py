"""The demo models a fresh server deploys, so there is something to call right away.

Both are trained at first start from datasets bundled with scikit-learn (no download), in a
couple of seconds, deterministically:

- ``iris``: logistic regression on the iris flowers, saved with skops (sklearn runtime);
  input ``input`` FP32 ``[-1, 4]``, outputs ``label`` INT64 and ``probabilities`` FP32.
- ``digits``: logistic regression on 8x8 handwritten digits, exported to ONNX with
  skl2onnx (onnx runtime); input ``input`` FP32 ``[-1, 64]`` (pixel values 0-16), outputs
  ``label`` INT64 ``[-1]`` and ``probabilities`` FP32 ``[-1, 10]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

_SEED = 0
_TEST_SIZE = 0.25


@dataclass(frozen=True)
class DemoModel:
    """A built demo artifact and what to register it with."""

    name: str
    path: Path
    runtime: str
    artifact_name: str
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def build_demo_models(dest_dir: Path) -> list[DemoModel]:
    """Train the demo models and write their artifacts into ``dest_dir``."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    return [_build_iris(dest_dir), _build_digits(dest_dir)]


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    parts: list[np.ndarray] = train_test_split(
        x.astype(np.float32), y, test_size=_TEST_SIZE, random_state=_SEED, stratify=y
    )
    return tuple(parts)


def _metadata(dataset: str, accuracy: float, description: str, **extra: Any) -> dict[str, Any]:
    import sklearn

    return {
        "dataset": dataset,
        "accuracy": round(accuracy, 4),
        "evaluation": f"accuracy on a held-out stratified {_TEST_SIZE:.0%} split",
        "description": description,
        "framework": f"scikit-learn {sklearn.__version__}",
        "demo": True,
        **extra,
    }


def _build_iris(dest_dir: Path) -> DemoModel:
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    x_train, x_test, y_train, y_test = _split(data.data, data.target)
    model = LogisticRegression(max_iter=1000, random_state=_SEED).fit(x_train, y_train)
    path = dest_dir / "iris.skops"
    sio.dump(model, path)
    description = (
        "Iris flower species from sepal and petal length and width (cm), "
        "logistic regression (scikit-learn, skops)."
    )
    metadata = _metadata(
        "iris (scikit-learn bundled)",
        float(model.score(x_test, y_test)),
        description,
        features=list(data.feature_names),
        class_names=[str(n) for n in data.target_names],
        example=[[5.1, 3.5, 1.4, 0.2]],
    )
    return DemoModel("iris", path, "sklearn", path.name, description, metadata)


def _build_digits(dest_dir: Path) -> DemoModel:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_digits()
    x_train, x_test, y_train, y_test = _split(data.data, data.target)
    # scaling lets lbfgs converge well inside max_iter (no ConvergenceWarning)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=_SEED))
    model.fit(x_train, y_train)
    onx = convert_sklearn(
        model,
        name="digits",  # else a random UUID: the same model would get a new sha256 each time
        initial_types=[("input", FloatTensorType([None, 64]))],
        final_types=[
            ("label", Int64TensorType([None])),
            ("probabilities", FloatTensorType([None, 10])),
        ],
        # ZipMap would return a list of {class: probability} maps, which has no V2 form
        options={id(model.steps[-1][1]): {"zipmap": False}},
    )
    path = dest_dir / "digits.onnx"
    path.write_bytes(onx.SerializeToString())
    description = (
        "Handwritten digit (0-9) from 8x8 grayscale pixels valued 0-16, row by row; "
        "scaled logistic regression exported to ONNX."
    )
    metadata = _metadata(
        "digits (scikit-learn bundled, UCI optical recognition)",
        float(model.score(x_test, y_test)),
        description,
        class_names=[str(n) for n in data.target_names],
        example=[data.data[0].astype(float).tolist()],
    )
    return DemoModel("digits", path, "onnx", path.name, description, metadata)
