"""Name → model builder: `mlp`, `linear`, or a user factory `package.module:factory`."""
from __future__ import annotations

import inspect

from torch import nn

from optcmp.config import ModelConfig
from optcmp.errors import ConfigError
from optcmp.imports import is_import_path, load_object

ACTIVATION_LAYERS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}
NORM_LAYERS = {"layernorm": nn.LayerNorm, "batchnorm": nn.BatchNorm1d}
BUILTIN = ("mlp", "linear")


def mlp(in_features: int, out_features: int, hidden: list[int], norm: str = "none", activation: str = "none") -> nn.Sequential:
    """Linear → [norm] → [activation] per hidden width, then a Linear head.

    With hidden [20, 20, 20, 20], layernorm and no activation this is, layer for layer,
    the reference regression model, so `torch.manual_seed(s)` before either gives the
    same initial weights.
    """
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if norm != "none":
            layers.append(NORM_LAYERS[norm](h))
        if activation != "none":
            layers.append(ACTIVATION_LAYERS[activation]())
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def build_model(cfg: ModelConfig, in_features: int, out_features: int) -> nn.Module:
    """Build the configured model for data with `in_features` inputs and `out_features` outputs."""
    if cfg.kind == "mlp":
        return mlp(in_features, out_features, cfg.hidden, cfg.norm, cfg.activation)
    if cfg.kind == "linear":
        return nn.Linear(in_features, out_features)
    if is_import_path(cfg.kind):
        factory = load_object(cfg.kind, "model.kind")
        kwargs = dict(cfg.kwargs)
        params = inspect.signature(factory).parameters
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if name in params or any(p.kind is p.VAR_KEYWORD for p in params.values()):
                kwargs.setdefault(name, value)
        model = factory(**kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError("model.kind", f"`{cfg.kind}` returned {type(model).__name__}, expected a torch.nn.Module")
        return model
    raise ConfigError("model.kind", f"unknown model `{cfg.kind}`; allowed: {', '.join(BUILTIN)} or package.module:factory")
