"""The torch networks, built from a JSON-able architecture dict (``build_model``).

Keeping the architecture as plain JSON (next to safetensors weights) is what lets serving
rebuild a model without pickle. Every network is wrapped in :class:`TrainedNet`, which
turns raw outputs into what the trainers predict: class probabilities (softmax) or, for
regression, the prediction in the target's units (the nets learn a standardized target).

Architectures (``arch["type"]``):

- ``mlp``: flatten → [Linear → ReLU → Dropout]* → Linear (features, embeddings, images,
  and the MiniLM head, which is an MLP with zero or one hidden layer)
- ``cnn``: [Conv → ReLU (→ MaxPool while the map is ≥ 8 px)]* → adaptive avg-pool (≤ 4x4)
  → Linear → ReLU → Dropout → Linear
- ``lstm``: Embedding(pad 0) → LSTM → mean over non-pad positions → Dropout → Linear
- ``transformer``: Embedding + learned positions → TransformerEncoder with the pad mask →
  mean over non-pad positions → Linear
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TrainedNet(nn.Module):
    """A network plus its output transform (softmax, or de-standardizing a regression)."""

    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net = net
        self.task = task
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Training output: logits [N, C], or the standardized regression value [N]."""
        out: torch.Tensor = self.net(x)
        return out if self.task == "classification" else out.squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        if self.task == "classification":
            return torch.softmax(out, dim=-1)
        return out * self.y_std + self.y_mean

    def set_target_scale(self, mean: float, std: float) -> None:
        self.y_mean.fill_(mean)
        self.y_std.fill_(std if std > 0 else 1.0)


def build_model(arch: dict[str, Any]) -> TrainedNet:
    """The untrained (randomly initialised) model that ``arch`` describes."""
    builders = {"mlp": _mlp, "cnn": _cnn, "lstm": LstmNet, "transformer": TransformerNet}
    kind = arch.get("type")
    if kind not in builders:
        raise ValueError(f"unknown architecture type {kind!r}")
    return TrainedNet(builders[kind](arch), str(arch["task"]))


def _mlp(arch: dict[str, Any]) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(arch["in_dim"])
    for hidden in arch.get("hidden", []):
        layers += [nn.Linear(width, int(hidden)), nn.ReLU(), nn.Dropout(float(arch["dropout"]))]
        width = int(hidden)
    layers.append(nn.Linear(width, int(arch["out_dim"])))
    return nn.Sequential(*layers)


def _cnn(arch: dict[str, Any]) -> nn.Module:
    channels, height, width = (int(v) for v in arch["in_shape"])
    kernel = int(arch["kernel_size"])
    layers: list[nn.Module] = []
    for out in arch["channels"]:
        layers += [nn.Conv2d(channels, int(out), kernel, padding=kernel // 2), nn.ReLU()]
        channels = int(out)
        if min(height, width) >= 8:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    pooled = (min(height, 4), min(width, 4))
    layers += [nn.AdaptiveAvgPool2d(pooled), nn.Flatten()]
    features = channels * pooled[0] * pooled[1]
    hidden = int(arch["hidden"])
    if hidden > 0:
        layers += [nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(float(arch["dropout"]))]
        features = hidden
    layers.append(nn.Linear(features, int(arch["out_dim"])))
    return nn.Sequential(*layers)


def masked_mean(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of ``h`` [N, L, D] over the positions where ``keep`` [N, L] is true."""
    weights = keep.unsqueeze(-1).to(h.dtype)
    return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class LstmNet(nn.Module):
    """Token ids [N, L] (0 = pad) → logits: embedding, LSTM, masked mean pooling."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        layers = int(arch["layers"])
        dropout = float(arch["dropout"])
        bidirectional = bool(arch["bidirectional"])
        hidden = int(arch["hidden"])
        self.embed = nn.Embedding(int(arch["vocab_size"]), int(arch["embedding_dim"]), 0)
        self.lstm = nn.LSTM(
            int(arch["embedding_dim"]),
            hidden,
            num_layers=layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), int(arch["out_dim"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        out: torch.Tensor = self.out(self.drop(masked_mean(h, x != 0)))
        return out


class TransformerNet(nn.Module):
    """Token ids [N, L] (0 = pad) → logits: a small pre-norm transformer encoder."""

    def __init__(self, arch: dict[str, Any]) -> None:
        super().__init__()
        d_model = int(arch["d_model"])
        self.embed = nn.Embedding(int(arch["vocab_size"]), d_model, 0)
        self.positions = nn.Parameter(
            torch.randn(1, int(arch["seq_len"]), d_model) * 0.02,
            requires_grad=bool(arch["positional"]),
        )
        if not arch["positional"]:
            self.positions.data.zero_()
        layer = nn.TransformerEncoderLayer(
            d_model,
            int(arch["heads"]),
            int(arch["dim_feedforward"]),
            float(arch["dropout"]),
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, int(arch["layers"]), norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.out = nn.Linear(d_model, int(arch["out_dim"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        keep = x != 0
        # never mask every position of a row (an all-pad text): attention would be NaN
        first = torch.arange(length, device=x.device) == 0
        pad = ~(keep | first)
        h = self.embed(x) + self.positions[:, :length]
        h = self.encoder(h, src_key_padding_mask=pad)
        out: torch.Tensor = self.out(masked_mean(h, ~pad))
        return out
