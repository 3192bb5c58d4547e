"""Name → model builder: `mlp`, `linear`, or a user factory `package.module:factory`.

A factory (a function or an nn.Module class) is called with `model.kwargs`, plus
`in_features` and `out_features` (the data's feature count and the number of classes, or
of regression targets) when it takes them, and must return an nn.Module.
"""
from __future__ import annotations

from torch import nn

from optcmp.config import ModelConfig, _did_you_mean
from optcmp.errors import ConfigError
from optcmp.limits import PARAMETER_COPIES, check_fits
from optcmp.imports import check_kwargs, colon_hint, is_import_path, load_object, signature_of

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
SUPPLIED = ("in_features", "out_features")


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


def imported_model(cfg: ModelConfig, in_features: int, out_features: int) -> nn.Module:
    factory = load_object(cfg.kind, "model.kind")
    kwargs = dict(cfg.kwargs)
    sig = signature_of(factory)
    takes_any = sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for name, value in zip(SUPPLIED, (in_features, out_features)):
        if sig is not None and (name in sig.parameters or takes_any):
            kwargs.setdefault(name, value)
    check_kwargs("model.kwargs", factory, kwargs, supplied=("self", *SUPPLIED))
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code failed: one line, not a traceback
        raise ConfigError("model.kind", f"`{cfg.kind}` raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError("model.kind", f"`{cfg.kind}` returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def build_model(cfg: ModelConfig, in_features: int, out_features: int) -> nn.Module:
    """Build the configured model for data with `in_features` inputs and `out_features` outputs."""
    if cfg.kind in BUILTIN:
        widths = [in_features, *(cfg.hidden if cfg.kind == "mlp" else ()), out_features]
        n_params = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
        check_fits("model.hidden" if cfg.kind == "mlp" else "model", f"the {cfg.kind} model's {n_params:,} parameters",
                   n_params, PARAMETER_COPIES)
    if cfg.kind == "mlp":
        return mlp(in_features, out_features, cfg.hidden, cfg.norm, cfg.activation)
    if cfg.kind == "linear":
        return nn.Linear(in_features, out_features)
    if is_import_path(cfg.kind):
        return imported_model(cfg, in_features, out_features)
    raise ConfigError("model.kind", f"unknown model `{cfg.kind}`{_did_you_mean(cfg.kind, BUILTIN)}; "
                      f"allowed: {', '.join(BUILTIN)} or package.module:factory{colon_hint(cfg.kind)}")
