"""run_training end to end, in process, with the real data library and trainers.

The central promise: the bundle a run writes, served by the "trained" runtime through a
``LoadSpec`` (the way a worker loads it), returns the same probabilities as the trainer that
was just fitted, run in this process on the same raw rows (``trainer.predict(
preprocessor.transform(columns))``), to 1e-5. Checked for a scikit-learn trainer exported
to ONNX (iris), a torch CNN (digits, 2 epochs) and a regressor (diabetes).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelport.backends.protocol import load_spec_to_dict
from modelport.errors import InvalidInput
from modelport.runtimes import runtime_class, validate_inputs
from modelport.runtimes.base import LoadSpec, Runtime
from modelport.training.bundle import read_manifest
from modelport.training.run import RunOutcome, RunSpec, check_trainer_fits, run_training
from modelport.training.table import Table
from modelport.training.trainers.base import TrainingCancelled
from modelport.types.admin import Signature
from modelport.types.training import PreprocessSpec


class Events:
    """A Reporter that keeps what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def event(self, type: str, data: dict[str, Any]) -> None:
        json.dumps(data, allow_nan=False)  # every event must be JSON-able as sent
        self.seen.append((type, data))

    def types(self) -> list[str]:
        return [t for t, _ in self.seen]


def _spec(dataset: str, trainer: str, **overrides: Any) -> RunSpec:
    base: dict[str, Any] = {
        "run_id": 7,
        "dataset_format": "builtin",
        "dataset_name": dataset,
        "trainer": trainer,
        "threads": 2,
    }
    return RunSpec.model_validate({**base, **overrides})


def _load(bundle: Path, tmp_path: Path) -> Runtime:
    spec = LoadSpec(
        runtime="trained",
        artifact_path=bundle,
        artifact_name=bundle.name,
        sha256=hashlib.sha256(bundle.read_bytes()).hexdigest(),
        options={"cache_dir": str(tmp_path / "unpacked")},
    )
    runtime = runtime_class("trained")(spec)
    runtime.load()
    return runtime


def _serving_inputs(signature: Signature, part: Table) -> dict[str, np.ndarray]:
    """Raw rows as a client sends them: V2 tensors named by the signature."""
    names = [t.name for t in signature.inputs]
    if names == ["input"]:
        stacked = np.stack([part.columns[n] for n in part.feature_names], axis=1)
        return {"input": stacked.astype(np.float32)}
    return {name: part.columns[name] for name in names}


def _assert_serves_like_training(outcome: RunOutcome, tmp_path: Path) -> dict[str, np.ndarray]:
    fitted = outcome.fitted
    assert fitted is not None
    part = fitted.table.take(fitted.split.test)
    expected = fitted.trainer.predict(fitted.preprocessor.transform(part.columns))
    runtime = _load(outcome.bundle_path, tmp_path)
    assert runtime.signature == outcome.signature
    inputs = validate_inputs(runtime.signature, _serving_inputs(runtime.signature, part))
    served = runtime.predict(inputs)
    if fitted.preprocessor.task == "regression":
        np.testing.assert_allclose(served["prediction"], expected, atol=1e-5, rtol=1e-5)
        return served
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    classes = np.asarray(fitted.preprocessor.classes, dtype=object)
    assert list(served["label"]) == list(classes[np.argmax(expected, axis=1)])
    return served


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunOutcome, Events]:
    events = Events()
    workdir = tmp_path_factory.mktemp("iris")
    return run_training(_spec("iris", "logistic_regression"), workdir, events), events


def test_iris_events_and_metrics(iris_run: tuple[RunOutcome, Events]) -> None:
    outcome, events = iris_run
    assert [t for t in events.types() if t != "log"] == ["started", "metrics", "metrics", "done"]
    assert events.types()[0] == "started"
    assert events.seen[0][1] == {"resumed_from_epoch": None}
    assert set(outcome.metrics) == {"validation", "test"}
    test = outcome.metrics["test"]
    assert test["accuracy"] >= 0.85
    n_test = len(outcome.fitted.split.test)  # type: ignore[union-attr]
    assert len(test["confusion_matrix"]) == 3 and sum(map(sum, test["confusion_matrix"])) == n_test
    assert outcome.metadata["format"] == "onnx"
    assert outcome.metadata["feature_names"] == outcome.fitted.table.feature_names  # type: ignore[union-attr]
    assert outcome.metadata["preprocessing"]["numeric"] == "standardize"
    assert outcome.epochs_run == 0


def test_iris_bundle_serves_like_training(
    iris_run: tuple[RunOutcome, Events], tmp_path: Path
) -> None:
    outcome, _ = iris_run
    served = _assert_serves_like_training(outcome, tmp_path)
    assert served["probabilities"].dtype == np.float32
    manifest = read_manifest(outcome.bundle_path)
    assert manifest.trainer == "logistic_regression" and manifest.classes == [
        "setosa",
        "versicolor",
        "virginica",
    ]


def test_iris_bundle_loads_in_a_worker_process(
    iris_run: tuple[RunOutcome, Events], tmp_path: Path
) -> None:
    """``worker --inspect`` (how the registry learns a signature) loads the bundle."""
    outcome, _ = iris_run
    bundle = outcome.bundle_path
    spec = LoadSpec(
        runtime="trained",
        artifact_path=bundle,
        artifact_name=bundle.name,
        sha256=hashlib.sha256(bundle.read_bytes()).hexdigest(),
        options={"cache_dir": str(tmp_path / "unpacked")},
    )
    done = subprocess.run(
        [sys.executable, "-m", "modelport.backends.worker", "--inspect"],
        input=json.dumps(load_spec_to_dict(spec)).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert Signature.model_validate_json(done.stdout) == outcome.signature


def test_same_seed_same_result(iris_run: tuple[RunOutcome, Events], tmp_path: Path) -> None:
    """Same spec, fresh work folder: same metrics, same manifest and preprocessing bytes.

    (The ONNX file itself differs: skl2onnx names each graph with a random uuid.)
    """
    outcome, _ = iris_run
    again = run_training(_spec("iris", "logistic_regression"), tmp_path, Events())
    assert again.metrics == outcome.metrics
    for name in ("manifest.json", "preprocess.json"):
        with tarfile.open(again.bundle_path) as a, tarfile.open(outcome.bundle_path) as b:
            assert _member(a, name) == _member(b, name)


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    handle = archive.extractfile(name)
    assert handle is not None
    return handle.read()


def test_digits_cnn_bundle_serves_like_training(tmp_path: Path) -> None:
    events = Events()
    params = {"epochs": 2, "batch_size": 64}
    outcome = run_training(_spec("digits", "cnn", params=params), tmp_path / "run", events)
    epochs = [data for kind, data in events.seen if kind == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["epochs"] == 2 for e in epochs)
    assert "loss" in epochs[0]["metrics"]
    assert events.types()[0] == "started" and events.types()[-1] == "done"
    assert outcome.epochs_run == 2
    assert outcome.signature.inputs[0].name == "image"
    assert outcome.metrics["test"]["accuracy"] >= 0.8
    _assert_serves_like_training(outcome, tmp_path)


def test_diabetes_regression_bundle_serves_like_training(tmp_path: Path) -> None:
    outcome = run_training(_spec("diabetes", "linear_regression"), tmp_path / "run", Events())
    assert [t.name for t in outcome.signature.outputs] == ["prediction"]
    assert set(outcome.metrics["test"]) == {"mse", "mae", "r2"}
    assert outcome.metrics["test"]["r2"] > 0.3
    _assert_serves_like_training(outcome, tmp_path)


def test_cross_validation_adds_cv_metrics(tmp_path: Path) -> None:
    events = Events()
    spec = _spec("iris", "logistic_regression", split={"folds": 3})
    outcome = run_training(spec, tmp_path, events)
    cv = outcome.metrics["cv"]
    assert cv["folds"] == 3
    assert 0.7 <= cv["accuracy"] <= 1.0 and cv["accuracy_std"] >= 0.0
    assert ("metrics", {"split": "cv", "metrics": cv}) in events.seen


def test_cancel_before_training_raises_and_writes_no_bundle(tmp_path: Path) -> None:
    with pytest.raises(TrainingCancelled):
        run_training(
            _spec("iris", "logistic_regression"), tmp_path, Events(), should_stop=lambda: True
        )
    assert not (tmp_path / "model.mpbundle").exists()


@pytest.mark.parametrize(
    ("trainer", "kind", "text", "param"),
    [
        ("cnn", "tabular", "tokens", "trainer"),
        ("lstm", "text", "minilm", "preprocessing.text"),
        ("no_such_trainer", "tabular", "tokens", "trainer"),
    ],
)
def test_trainer_must_fit_the_data(trainer: str, kind: Any, text: Any, param: str) -> None:
    with pytest.raises(InvalidInput) as info:
        check_trainer_fits(trainer, kind, "classification", PreprocessSpec(text=text))
    assert info.value.param == param


def test_regressor_refuses_classification() -> None:
    with pytest.raises(InvalidInput, match="linear_regression"):
        check_trainer_fits("linear_regression", "tabular", "classification", PreprocessSpec())


def test_bad_params_name_the_field(tmp_path: Path) -> None:
    spec = _spec("iris", "logistic_regression", params={"C": 0})
    with pytest.raises(InvalidInput, match=r"params\.C"):
        run_training(spec, tmp_path, Events())
