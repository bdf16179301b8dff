"""Building the functional and the optimiser of a run from its configuration."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import lineax as lx
import optax
import optimistix as optx

from .. import models
from .._config import (
    ConfigError,
    ModelConfig,
    OptimizerConfig,
)
from .._errors import InputError
from ..models import MLP, get_functional
from ..xc import AbstractFunctional, PW92Correlation, SlaterExchange, Sum
from ._common import CONSTRAINED_META_GGA

# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _correction_classes() -> dict[str, type]:
    out = {}
    for name in models.__all__:
        obj = getattr(models, name)
        if isinstance(obj, type) and issubclass(obj, AbstractFunctional) and not getattr(obj, "__abstractmethods__", None):
            out[name] = obj
    return out


def _constrained_meta_gga(*, width: int = 16, depth: int = 2, final_scale: float = 1e-2, key):
    kx, kc = jr.split(key)
    return (SlaterExchange() * MLP(2, width=width, depth=depth, final_scale=final_scale, key=kx)
            + PW92Correlation.modified() * MLP(4, width=width, depth=depth, final_scale=final_scale, key=kc))


# Integer options that count layers may be 0 (no hidden layer); every other integer option of the
# models is a size (width, channels, atoms, neighbours, ...) and must be at least 1.
_COUNT_OPTIONS = ("depth", "layers")
# Float options that are lengths or widths (Bohr) must be positive.
_LENGTH_OPTIONS = ("cutoff", "atom_cutoff", "length")
_OPTION_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _option_kind(parameter: inspect.Parameter):
    """The config type of a constructor option: int, float, bool, str, ("list", item type), or
    None when the option cannot be given in a config (e.g. a module). Read from the annotation
    (a string under `from __future__ import annotations`, or a type), else from the default."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        default = parameter.default
        if isinstance(default, (bool, int, float, str)):
            return type(default)
        if isinstance(default, tuple) and default and len({type(x) for x in default}) == 1 \
                and type(default[0]) in (int, float, str):
            return ("list", float if type(default[0]) is int else type(default[0]))
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "")
    if text.startswith("tuple[") and text.endswith(",...]") and text[6:-5] in _OPTION_TYPES:
        return ("list", _OPTION_TYPES[text[6:-5]])
    return _OPTION_TYPES.get(text)


def _check_option(model_name: str, name: str, parameter: inspect.Parameter, value):
    """`value` of the option `name` as the constructor expects it, or ConfigError (one line)."""
    where = f"config [model.options] {name}"
    kind = _option_kind(parameter)
    if kind is None:
        raise ConfigError(f"{where}: {model_name}'s option {name!r} ({parameter.annotation}) cannot be set "
                          "in a config")

    def scalar(v, t, label):
        if t is bool:
            ok = isinstance(v, bool)
        elif t is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif t is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        else:
            ok = isinstance(v, str)
        if not ok:
            raise ConfigError(f"{label}: expected {_TYPE_WORDS[t]}, got {v!r}")
        if t is float:
            if not math.isfinite(v):
                raise ConfigError(f"{label}: expected a finite number, got {v!r}")
            return float(v)
        return v

    if isinstance(kind, tuple):
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(f"{where}: expected a non-empty list of {_TYPE_WORDS[kind[1]]}s, got {value!r}")
        return tuple(scalar(v, kind[1], f"{where}[{i}]") for i, v in enumerate(value))
    value = scalar(value, kind, where)
    if kind is int:
        lowest = 0 if name in _COUNT_OPTIONS else 1
        if value < lowest:
            what = "a count of layers" if lowest == 0 else "a size"
            raise ConfigError(f"{where}: must be at least {lowest} ({what}), got {value}")
    if kind is float and name in _LENGTH_OPTIONS and value <= 0:
        raise ConfigError(f"{where}: must be positive (a length in Bohr), got {value}")
    return value


def build_functional(model: ModelConfig, seed: int = 0) -> tuple[AbstractFunctional, Any]:
    """The functional `baseline + correction` of a `[model]` section, and which leaves train.

    **Arguments:** `model`, a [`ModelConfig`][nlxc.train.ModelConfig]; `seed` of the
    correction's initialisation (`jax.random.key(seed)`).

    **Returns:** `(functional, trainable)`: an [`nlxc.xc.AbstractFunctional`][] and a pytree
    of booleans of the same structure (`True` for the float arrays that are optimised: those
    of the correction, and those of the baseline if `train_baseline`), for `eqx.partition`.

    **Raises:** [`ConfigError`][nlxc.train.ConfigError] for an unknown baseline or correction
    name, an option the correction's constructor does not take, or an option value of the wrong
    type (checked against the constructor's annotation: integer, number, boolean, string or a
    list of them) or out of range (sizes at least 1, `depth`/`layers` at least 0, lengths
    positive, numbers finite); one line, naming the option, the expected type and the value.
    """
    baseline = None
    if model.baseline.lower() != "none":
        try:
            baseline = get_functional(model.baseline)
        except InputError as err:
            raise ConfigError(f"config [model] baseline: {err}") from None
    correction = None
    options = dict(model.options)
    if model.correction.lower() != "none":
        classes = _correction_classes()
        if model.correction == CONSTRAINED_META_GGA:
            factory = _constrained_meta_gga
        elif model.correction in classes:
            factory = classes[model.correction]
        else:
            import difflib

            known = sorted(classes) + [CONSTRAINED_META_GGA]
            close = difflib.get_close_matches(model.correction, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(known)}"
            raise ConfigError(f"config [model] correction: unknown model {model.correction!r}; {hint}")
        parameters = inspect.signature(factory).parameters
        for option in options:
            if option == "key" or option not in parameters:
                allowed = [p for p in parameters if p not in ("key", "self")]
                raise ConfigError(f"config [model.options] {option!r}: not an option of {model.correction} "
                                  f"(its options: {', '.join(allowed)})")
            options[option] = _check_option(model.correction, option, parameters[option], options[option])
        try:
            correction = factory(**options, key=jr.key(seed))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config [model.options]: {model.correction} rejected the options: "
                              f"{str(err).splitlines()[0]}") from None
    parts = tuple(p for p in (baseline, correction) if p is not None)
    functional = parts[0] if len(parts) == 1 else Sum(parts)

    def flags(tree, value):
        return jax.tree.map(lambda x: value and eqx.is_inexact_array(x), tree)

    if len(parts) == 1:
        trainable = flags(functional, correction is not None or model.train_baseline)
    else:
        trainable = Sum((flags(baseline, model.train_baseline), flags(correction, True)))
    if not any(jax.tree.leaves(trainable)):
        raise ConfigError("config [model]: the functional has no trainable parameters "
                          "(set train_baseline = true, or add a correction)")
    return functional, trainable


# --------------------------------------------------------------------------------------------
# Optimiser
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def build_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation | optx.AbstractLeastSquaresSolver:
    """The optax optimiser of an `[optimizer]` section for a run of `steps` steps, or, for
    `levenberg-marquardt` / `gauss-newton`, the optimistix least-squares solver
    (`optimistix.LevenbergMarquardt(rtol, atol)` / `optimistix.GaussNewton(rtol, atol)` with
    lineax's SVD, the minimum-norm least-squares step).

    Cached: equal configurations give the *same* object, so compiled training steps are shared
    between runs (and between an interrupted run and its resumption) in one process.
    """
    if config.name == "levenberg-marquardt":
        return optx.LevenbergMarquardt(rtol=config.rtol, atol=config.atol)
    if config.name == "gauss-newton":
        # the undamped step solves J δ = r: the SVD's pseudo-inverse copes with the zero rows of
        # molecules without a training weight and with more parameters than residuals
        return optx.GaussNewton(rtol=config.rtol, atol=config.atol, linear_solver=lx.SVD())
    lr, n = config.learning_rate, max(steps, 1)
    if config.schedule == "constant":
        schedule = optax.constant_schedule(lr)
    elif config.schedule == "cosine":
        schedule = optax.cosine_decay_schedule(lr, n, alpha=config.final_fraction)
    elif config.schedule == "exponential":
        schedule = optax.exponential_decay(lr, n, config.final_fraction)
    else:
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, max(n, config.warmup_steps + 1),
                                                      end_value=lr * config.final_fraction)
    if config.name == "adamw":
        opt = optax.adamw(schedule, weight_decay=config.weight_decay)
    else:
        opt = getattr(optax, config.name)(schedule)
    if config.clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.clip_norm), opt)
    return opt
