"""Toy MLP / toy SNN for the toy experiment: tests the spine (CLI, logging, callbacks) in seconds.

``ToyMLP``: ``[B, F] -> (Linear -> BN -> act) x depth -> Linear -> [B, K]``. With ``spiking=True``
the activation is an I-LIF neuron, the input is repeated over ``timesteps`` steps and the logits
are averaged over time; the first Linear sees the real input (MAC), later ones see integer spikes
(AC), so the energy and memory callbacks have something to measure.

Registered variants (``spikelight.models.create_model(name, **kw)``; ``in_features`` 16 and
``num_classes`` 4 unless given):

============== =========================================================
name           structure
============== =========================================================
toy_mlp        ReLU MLP, hidden 64 x 2
toy_snn        I-LIF MLP, hidden 64 x 2, T = 2 (``experiments/toy.yaml``)
toy_snn_test   I-LIF MLP, hidden 8 x 2, T = 2
============== =========================================================
"""

from __future__ import annotations

import torch
from torch import nn

from spikelight.models.registry import register_model
from spikelight.nn.neurons import ILIF

__all__ = ["ToyMLP", "toy_mlp", "toy_snn", "toy_snn_test"]


class ToyMLP(nn.Module):
    """MLP ``in -> hidden x depth -> classes``; the spiking variant uses I-LIF between layers.

    Shape: ``[B, in_features] -> [B, num_classes]``.
    """

    def __init__(
        self,
        *,
        in_features: int,
        num_classes: int,
        hidden: int = 64,
        depth: int = 2,
        spiking: bool = False,
        timesteps: int = 1,
    ) -> None:
        super().__init__()
        if timesteps < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.in_features, self.num_classes = int(in_features), int(num_classes)
        self.spiking = bool(spiking)
        self.timesteps = int(timesteps)
        layers: list[nn.Module] = []
        dims = [in_features] + [hidden] * depth
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), ILIF() if spiking else nn.ReLU()]
        self.body = nn.ModuleList(layers)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spiking:
            for layer in self.body:
                x = layer(x)
            return self.head(x)
        T, B = self.timesteps, x.shape[0]
        h = x.unsqueeze(0).expand(T, *x.shape)  # [T, B, F]
        for layer in self.body:
            if isinstance(layer, (nn.Linear, nn.BatchNorm1d)):
                h = layer(h.reshape(T * B, -1)).reshape(T, B, -1)
            else:
                h = layer(h)
        return self.head(h.reshape(T * B, -1)).reshape(T, B, -1).mean(0)


def _toy(kw: dict, **defaults) -> ToyMLP:
    return ToyMLP(**{"in_features": 16, "num_classes": 4, **defaults, **kw})


@register_model
def toy_mlp(**kw) -> ToyMLP:
    """ReLU MLP (the ANN twin of ``toy_snn``)."""
    return _toy(kw)


@register_model
def toy_snn(**kw) -> ToyMLP:
    """I-LIF MLP, T = 2."""
    return _toy(kw, spiking=True, timesteps=2)


@register_model
def toy_snn_test(**kw) -> ToyMLP:
    """Tiny I-LIF MLP for tests."""
    return _toy(kw, hidden=8, spiking=True, timesteps=2)
