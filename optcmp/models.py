"""Name → model builder: `mlp`, `linear`, `cnn`, or a user factory `package.module:factory`.

A factory (a function or an nn.Module class) is called with `model.kwargs`, plus
`in_features` and `out_features` (the data's feature count — of image samples, their
channels — and the number of classes, or of regression targets) and `in_shape` (one
sample's shape, a tuple) when it takes them, and must return an nn.Module.
"""
from __future__ import annotations

import math

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
BUILTIN = ("mlp", "linear", "cnn")
SUPPLIED = ("in_features", "out_features", "in_shape")


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


def cnn(in_shape: tuple[int, ...], out_features: int, channels: list[int], activation: str = "none") -> nn.Sequential:
    """Per width in `channels`: Conv2d 3×3 (padding 1) → [activation] → MaxPool2d 2×2;
    then Flatten → Linear. `in_shape`: one image, [channels, height, width]."""
    c, h, w = in_shape
    layers: list[nn.Module] = []
    for width in channels:
        if h < 2 or w < 2:
            most = max(0, min(in_shape[1], in_shape[2]).bit_length() - 1)
            raise ConfigError("model.channels", f"{len(channels)} blocks of a convolution and a 2×2 max-pool halve "
                              f"{in_shape[1]}×{in_shape[2]} images below 1×1; allowed: at most {most} widths")
        layers.append(nn.Conv2d(c, width, 3, padding=1))
        if activation != "none":
            layers.append(ACTIVATION_LAYERS[activation]())
        layers.append(nn.MaxPool2d(2))
        c, h, w = width, h // 2, w // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, out_features))


def _builtin_parameters(cfg: ModelConfig, in_shape: tuple[int, ...], out_features: int) -> int:
    if cfg.kind == "cnn":
        c, h, w = in_shape
        widths = [c, *cfg.channels]
        convs = sum((9 * a + 1) * b for a, b in zip(widths, widths[1:]))
        return convs + (cfg.channels[-1] * (h >> len(cfg.channels)) * (w >> len(cfg.channels)) + 1) * out_features
    widths = [in_shape[0], *(cfg.hidden if cfg.kind == "mlp" else ()), out_features]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:]))


def _check_samples(kind: str, in_shape: tuple[int, ...]) -> None:
    """The built-in models' input: flat features for the mlp and linear, images for the cnn."""
    shown = list(in_shape)
    if kind == "cnn" and len(in_shape) != 3:
        side = math.isqrt(in_shape[0]) if len(in_shape) == 1 else 0
        example = f"[1, {side}, {side}]" if side * side == in_shape[0] and side > 1 else "[channels, height, width]"
        raise ConfigError("data.shape", f"model `cnn` takes images [channels, height, width], but the data's samples "
                          f"have shape {shown}; give data.shape, e.g. {example}")
    if kind != "cnn" and len(in_shape) != 1:
        raise ConfigError("model.kind", f"model `{kind}` takes flat samples of features, but the data's samples have "
                          f"shape {shown}; allowed for such samples: cnn (images) or package.module:factory")


def imported_model(cfg: ModelConfig, in_features: int, out_features: int, in_shape: tuple[int, ...]) -> nn.Module:
    factory = load_object(cfg.kind, "model.kind")
    kwargs = dict(cfg.kwargs)
    sig = signature_of(factory)
    takes_any = sig is not None and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    for name, value in zip(SUPPLIED, (in_features, out_features, in_shape)):
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


def build_model(cfg: ModelConfig, in_features: int, out_features: int, in_shape: tuple[int, ...] | None = None) -> nn.Module:
    """Build the configured model for data with `in_features` inputs (samples of shape
    `in_shape`, default `(in_features,)`) and `out_features` outputs."""
    in_shape = (in_features,) if in_shape is None else tuple(in_shape)
    if cfg.kind in BUILTIN:
        _check_samples(cfg.kind, in_shape)
        n_params = _builtin_parameters(cfg, in_shape, out_features)
        key = {"mlp": "model.hidden", "cnn": "model.channels"}.get(cfg.kind, "model")
        check_fits(key, f"the {cfg.kind} model's {n_params:,} parameters", n_params, PARAMETER_COPIES)
    if cfg.kind == "mlp":
        return mlp(in_features, out_features, cfg.hidden, cfg.norm, cfg.activation)
    if cfg.kind == "linear":
        return nn.Linear(in_features, out_features)
    if cfg.kind == "cnn":
        return cnn(in_shape, out_features, cfg.channels, cfg.activation)
    if is_import_path(cfg.kind):
        return imported_model(cfg, in_features, out_features, in_shape)
    raise ConfigError("model.kind", f"unknown model `{cfg.kind}`{_did_you_mean(cfg.kind, BUILTIN)}; "
                      f"allowed: {', '.join(BUILTIN)} or package.module:factory{colon_hint(cfg.kind)}")
