"""The TensorBoard tags of a model's parameters, made once per model.

A parameter's *label* is its module's path, the module's type and the parameter's own
name: `0.Linear.weight`, `1.LayerNorm.weight`, `encoder.attn.MultiheadAttention.in_proj_weight`;
a parameter of the model itself has no path: `Linear.weight` for a bare `nn.Linear`. The
label is unique (module names hold no dots) and says what a number in the Histograms tab
belongs to: a LayerNorm's weight and a Linear layer's weight no longer look alike.
A *layer* is a label without the parameter's name (`0.Linear`): the unit of
`weight_norm/<layer>`; a parameter of the model itself is a layer of its own
(`weight_norm/Linear.weight`, `weight_norm/Linear.bias`), as it was before labels had types.

Histograms are `weights/<label>` and `grads/<label>`. Both engines take the tags from
their model (the vectorized engine from its template), so they log the same tags.
"""
from __future__ import annotations

from torch import nn


def parameter_labels(model: nn.Module) -> dict[str, str]:
    """Parameter name → label, in `named_parameters` order."""
    modules = dict(model.named_modules())
    labels = {}
    for name, _ in model.named_parameters():
        path, _, own = name.rpartition(".")
        kind = type(modules[path]).__name__
        labels[name] = f"{path}.{kind}.{own}" if path else f"{kind}.{own}"
    return labels


def layer_of(name: str, label: str) -> str:
    """The layer of parameter `name` with `label`: `0.weight`, `0.Linear.weight` → `0.Linear`;
    a parameter of the model itself (`weight`, `Linear.weight`) is its own: `Linear.weight`."""
    return label.rpartition(".")[0] if "." in name else label


class ParameterTags:
    """One model's tags, in the order of `names` (parameter names, model order): the
    histograms' (`weights`, `grads`) and the per-layer norms' (`layers`: for each
    parameter the index of its layer in `norm_tags[1:]`)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        labels = parameter_labels(model)
        self.labels = [labels[n] for n in names]
        self.weights = [f"weights/{label}" for label in self.labels]
        self.grads = [f"grads/{label}" for label in self.labels]
        layer_of_each = [layer_of(n, label) for n, label in zip(names, self.labels)]
        layer_names = list(dict.fromkeys(layer_of_each))
        self.layers = [layer_names.index(layer) for layer in layer_of_each]
        self.norm_tags = ("weight_norm", *(f"weight_norm/{layer}" for layer in layer_names))
