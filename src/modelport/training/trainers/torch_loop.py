"""The shared epoch loop of the torch trainers: optimizer, LR schedule, early stopping,
per-epoch checkpoints and exact resume.

Determinism: the caller seeds torch before building the model; the loop shuffles with its
own ``torch.Generator`` seeded from ``ctx.seed``. A checkpoint (written after every epoch)
holds everything the next epoch depends on: weights, optimizer and scheduler state, both
RNG states, the early-stopping counters and the best weights so far. So a job killed after
epoch k and started again on the same checkpoint directory ends with the same weights as a
run that never stopped.

Storage (no pickle): ``ckpt-<epoch>.safetensors`` for the tensors, then ``checkpoint.json``
for the rest, each written to a temporary name and renamed; the JSON names its tensor file
and is the commit point, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from modelport.training.trainers.base import EpochParams, FitData, TrainContext, TrainingCancelled
from modelport.training.trainers.torch_models import TrainedNet

CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_VERSION = 1
PREDICT_BATCH = 1024


@dataclass
class LoopState:
    """Progress counters, saved in every checkpoint."""

    epoch: int = 0  # epochs finished
    best_val_loss: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False


@dataclass
class _Run:
    """The live objects one ``train`` call works on."""

    model: TrainedNet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    generator: torch.Generator
    state: LoopState
    best: dict[str, torch.Tensor] | None = None


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def train(
    model: TrainedNet,
    data: FitData,
    params: EpochParams,
    ctx: TrainContext,
    fingerprint: dict[str, Any],
) -> LoopState:
    """Train ``model`` in place for ``params.epochs`` (resuming from a checkpoint if any).

    Ends with the best validation weights loaded (the last ones without validation data).
    Raises TrainingCancelled when ``ctx.should_stop()``.
    """
    set_threads(ctx.threads)
    ctx.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    x, y = _tensors(data.x_train, data.y_train, model)
    val = _tensors(data.x_val, data.y_val, model) if data.has_validation else None
    run = _Run(
        model=model,
        optimizer=_optimizer(model, params),
        scheduler=None,
        generator=torch.Generator().manual_seed(ctx.seed),
        state=LoopState(),
    )
    run.scheduler = _scheduler(run.optimizer, params)
    if _restore(run, ctx, fingerprint):
        ctx.resumed(run.state.epoch)
    while run.state.epoch < params.epochs and not run.state.stopped_early:
        lr = float(run.optimizer.param_groups[0]["lr"])
        metrics = {"loss": _train_epoch(run, x, y, params.batch_size, ctx), "lr": lr}
        if val is not None:
            metrics.update(_evaluate(model, *val))
        _track_best(run, metrics, params.early_stopping_patience)
        if run.scheduler is not None:
            run.scheduler.step()
        run.state.epoch += 1
        _save(run, ctx.checkpoint_dir, fingerprint)
        ctx.epoch_done(run.state.epoch, params.epochs, metrics)
        if run.state.stopped_early:
            ctx.log(f"early stopping after epoch {run.state.epoch}")
        elif run.state.epoch < params.epochs and ctx.should_stop():
            raise TrainingCancelled()
    if run.best is not None:
        model.load_state_dict(run.best)
    model.eval()
    return run.state


def predict(model: TrainedNet, x: np.ndarray) -> np.ndarray:
    """The model's output (probabilities or prediction) as float32, in batches."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), PREDICT_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(x[start : start + PREDICT_BATCH]))
            outs.append(model(batch).numpy())
    if not outs:
        return np.zeros((0,), dtype=np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)


# --- one epoch --------------------------------------------------------------------------


def _tensors(
    x: np.ndarray | None, y: np.ndarray | None, model: TrainedNet
) -> tuple[torch.Tensor, torch.Tensor]:
    assert x is not None and y is not None
    tx = torch.from_numpy(np.ascontiguousarray(x))
    if model.task == "classification":
        return tx, torch.from_numpy(np.asarray(y, dtype=np.int64))
    ty = torch.from_numpy(np.asarray(y, dtype=np.float32))
    return tx, (ty - model.y_mean) / model.y_std


def _loss(model: TrainedNet, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if model.task == "classification":
        return torch.nn.functional.cross_entropy(out, y)
    return torch.nn.functional.mse_loss(out, y)


def _train_epoch(
    run: _Run, x: torch.Tensor, y: torch.Tensor, batch_size: int, ctx: TrainContext
) -> float:
    """One pass over the shuffled training rows; the mean training loss."""
    run.model.train()
    order = torch.randperm(len(x), generator=run.generator)
    total = 0.0
    for start in range(0, len(x), batch_size):
        if ctx.should_stop():
            raise TrainingCancelled()
        index = order[start : start + batch_size]
        run.optimizer.zero_grad()
        loss = _loss(run.model, run.model.raw(x[index]), y[index])
        loss.backward()  # type: ignore[no-untyped-call]
        run.optimizer.step()
        total += float(loss.detach()) * len(index)
    return total / len(x)


def _evaluate(model: TrainedNet, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """val_loss and val_accuracy (classification) or val_r2 (regression)."""
    model.eval()
    with torch.inference_mode():
        out = torch.cat(
            [model.raw(x[s : s + PREDICT_BATCH]) for s in range(0, len(x), PREDICT_BATCH)]
        )
        metrics = {"val_loss": float(_loss(model, out, y))}
        if model.task == "classification":
            metrics["val_accuracy"] = float((out.argmax(dim=1) == y).float().mean())
        else:
            total = float(((y - y.mean()) ** 2).sum())
            residual = float(((y - out) ** 2).sum())
            metrics["val_r2"] = 1.0 - residual / total if total > 0 else 0.0
    return metrics


def _track_best(run: _Run, metrics: dict[str, float], patience: int | None) -> None:
    """Keep the lowest-val_loss weights; count epochs without improvement."""
    state = run.state
    val_loss = metrics.get("val_loss")
    if val_loss is None:
        return
    if state.best_val_loss is None or (math.isfinite(val_loss) and val_loss < state.best_val_loss):
        state.best_val_loss, state.best_epoch, state.bad_epochs = val_loss, state.epoch + 1, 0
        run.best = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    else:
        state.bad_epochs += 1
        state.stopped_early = patience is not None and state.bad_epochs >= patience


def _optimizer(model: TrainedNet, params: EpochParams) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=params.lr, momentum=params.momentum, weight_decay=params.weight_decay
        )
    return torch.optim.Adam(trainable, lr=params.lr, weight_decay=params.weight_decay)


def _scheduler(
    optimizer: torch.optim.Optimizer, params: EpochParams
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if params.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, params.step_size, params.gamma)
    if params.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.epochs)
    return None


# --- checkpoints ------------------------------------------------------------------------


def _save(run: _Run, directory: Path, fingerprint: dict[str, Any]) -> None:
    """Write this epoch's checkpoint atomically and drop the previous tensor file."""
    tensors = {f"model.{k}": v for k, v in run.model.state_dict().items()}
    if run.best is not None:
        tensors.update({f"best.{k}": v for k, v in run.best.items()})
    optim = run.optimizer.state_dict()
    other: dict[str, dict[str, Any]] = {}
    for index, slots in optim["state"].items():
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{slot}"] = value
            else:
                other.setdefault(str(index), {})[slot] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.shuffle"] = run.generator.get_state()
    name = f"ckpt-{run.state.epoch:05d}.safetensors"
    tmp = directory / f"{name}.tmp"
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(directory / name)
    meta = {
        "version": CHECKPOINT_VERSION,
        "tensors": name,
        "fingerprint": fingerprint,
        "state": asdict(run.state),
        "optimizer": {"param_groups": optim["param_groups"], "other": other},
        "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
    }
    tmp_json = directory / f"{CHECKPOINT_JSON}.tmp"
    tmp_json.write_text(json.dumps(meta))
    tmp_json.replace(directory / CHECKPOINT_JSON)
    for old in directory.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _restore(run: _Run, ctx: TrainContext, fingerprint: dict[str, Any]) -> bool:
    """Load the checkpoint in ``ctx.checkpoint_dir`` into ``run``; False when there is none."""
    path = ctx.checkpoint_dir / CHECKPOINT_JSON
    if not path.is_file():
        return False
    meta = json.loads(path.read_text())
    if meta.get("version") != CHECKPOINT_VERSION or meta.get("fingerprint") != fingerprint:
        ctx.log("ignoring a checkpoint written for different data or parameters")
        return False
    tensors = load_file(str(ctx.checkpoint_dir / meta["tensors"]))
    run.model.load_state_dict(_prefixed(tensors, "model."))
    best = _prefixed(tensors, "best.")
    run.best = best or None
    state: dict[int, dict[str, Any]] = {}
    for key, value in _prefixed(tensors, "optim.").items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    for index, slots in meta["optimizer"]["other"].items():
        state.setdefault(int(index), {}).update(slots)
    groups = meta["optimizer"]["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    run.optimizer.load_state_dict({"state": state, "param_groups": groups})
    if run.scheduler is not None and meta["scheduler"] is not None:
        run.scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    run.generator.set_state(tensors["rng.shuffle"])
    run.state = LoopState(**meta["state"])
    return True


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
