"""Training exchange–correlation functionals through the SCF: configuration, trainer, checkpoints.

A run is described by a [`TrainConfig`][nlxc.train.TrainConfig] (a TOML or YAML file, read
with [`load_config`][nlxc.train.load_config]) and executed by [`train`][nlxc.train.train], which
is also `nlxc train CONFIG` on the command line:

1. the molecules of a [`nlxc.data.ReferenceDataset`][] are split into training, validation
   and test molecules (free atoms are shared by all three, as atomization energies need them);
2. every molecule becomes a [`nlxc.System`][] in the dataset's basis and grid, and all of
   them are padded into a few buckets ([`nlxc.batch.make_batches`][]);
3. each optimisation step is *one* compiled function (`eqx.filter_jit`): the vmapped SCF of
   every bucket, the loss of every split (only the training loss is differentiated, through the
   SCF by the implicit adjoint) and the optax update. Validation and test molecules are solved in
   the same batches with zero weight, so their errors are known at every step for free (one
   compilation per run, none for evaluation), but they never reach the gradient;
4. the validation loss selects the best parameters and stops the run early (`patience`);
5. metrics go to `metrics.jsonl` (one JSON object per step), checkpoints to `last.eqx` (the
   resumable state: parameters, optimiser state, best parameters) and `best.eqx` (the best
   functional), each with a JSON sidecar holding the configuration, so
   [`load_checkpoint`][nlxc.train.load_checkpoint] can rebuild the functional;
6. at the end, the held-out (test) errors of the best functional are printed beside those of
   PySCF's LDA, PBE and B3LYP on the same molecules, basis, grid and auxiliary basis, and the
   learning curve and parity plots are written as PNG.

Running `train` again with the same configuration resumes from `last.eqx` (after an
interruption, e.g. Ctrl-C, which writes a checkpoint before it stops). Every step is
deterministic (full-batch, fixed seeds), so an interrupted and resumed run ends with the same
parameters as an uninterrupted one. A run directory holding a run of a *different*
configuration, or files the run did not write itself, is never overwritten: `train` raises
instead (the run keeps the names of the files it wrote in `manifest.json`).

Failures are values: a step whose training loss, gradient or update is not finite, or whose SCF
(or adjoint solve) failed for a training molecule, keeps the parameters and optimiser state it
started from (`jnp.where` inside the compiled step), is logged as `"ok": false` with its reason,
and the run goes on; `[training] max_failed_steps` consecutive failures stop it with
[`TrainingError`][nlxc.train.TrainingError], the last good state checkpointed.

Every checkpoint (`.eqx`) has a JSON sidecar with the SHA-256 of its bytes, verified on every
read; every file is written to a temporary file and renamed into place, so a kill at any moment
leaves the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import io
import json
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import optimistix as optx

from . import losses as L
from ._config import (
    LOSS_TERMS,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    LossConfig,
    ModelConfig,
    OptimizerConfig,
    RunConfig,
    TrainConfig,
    TrainingConfig,
    load_config,
)
from ._errors import InputError
from .batch import Batch, make_batches, solve_batch
from .grid_operators import required_grid_operators
from .system import System
from .xc._base import AbstractFunctional, Sum

__all__ = [
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "LossConfig",
    "ModelConfig",
    "OptimizerConfig",
    "RunConfig",
    "SPLITS",
    "TrainConfig",
    "TrainResult",
    "TrainState",
    "TrainingConfig",
    "TrainingError",
    "TrainingInterrupted",
    "build_functional",
    "build_optimizer",
    "load_checkpoint",
    "load_config",
    "train",
]

SPLITS = ("train", "validation", "test")
"""The three splits of a run's molecules, in the order of their rows in the step's losses."""

CONSTRAINED_META_GGA = "ConstrainedMetaGGA"


class TrainingError(RuntimeError):
    """Training cannot go on: `[training] max_failed_steps` consecutive steps failed (non-finite
    loss, gradient or update, or a training molecule's SCF failed), or the compiled step raised.
    The message is one line; the last good state is checkpointed in `last.eqx`."""


class TrainingInterrupted(KeyboardInterrupt):
    """A `KeyboardInterrupt` (Ctrl-C, or raised by a `callback`) that stopped [`train`][nlxc.train.train].

    **Attributes:** `checkpoint`: the path of `last.eqx` if the run has a resumable checkpoint
    (written on the interruption, or earlier), else `None`; `step`: the step it resumes at
    (`None` without a checkpoint);
    `pending`: whether XLA may still be compiling or running the interrupted step in its own
    threads. A process that is about to exit should then leave with `os._exit` (as `nlxc train`
    does): Python's normal shutdown would wait for those threads and can crash in them.
    """

    def __init__(self, message: str, *, checkpoint: str | None, step: int | None, pending: bool):
        super().__init__(message)
        self.checkpoint, self.step, self.pending = checkpoint, step, pending


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _correction_classes() -> dict[str, type]:
    from . import models

    out = {}
    for name in models.__all__:
        obj = getattr(models, name)
        if isinstance(obj, type) and issubclass(obj, AbstractFunctional) and not getattr(obj, "__abstractmethods__", None):
            out[name] = obj
    return out


def _constrained_meta_gga(*, width: int = 16, depth: int = 2, final_scale: float = 1e-2, key):
    from .models import MLP
    from .xc import PW92Correlation, SlaterExchange

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
    from .xc import get_functional

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
def build_optimizer(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """The optax optimiser of an `[optimizer]` section for a run of `steps` steps.

    Cached: equal configurations give the *same* object, so compiled training steps are shared
    between runs (and between an interrupted run and its resumption) in one process.
    """
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


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _StepData(eqx.Module):
    """Everything a step reads, as jit arguments (arrays only)."""

    batches: list[Batch]
    targets: list[L.Targets]
    molecule_weights: list[jax.Array]  # per batch: (3, batch) weights of each split
    reactions: L.Reactions | None
    reaction_weights: jax.Array | None  # (3, n_reactions)


@dataclasses.dataclass
class _Prepared:
    names: list[str]
    split_of: dict[str, str]
    dataset: Any
    systems: list[System]
    data: _StepData
    reaction_names: list[str]
    reaction_species: list[dict[str, float]]
    reaction_reference: np.ndarray
    target_energy: dict[str, float]


def _open_dataset(data: DataConfig):
    from .data import ReferenceDataset, default_dataset

    if data.dataset == "default":
        return default_dataset()
    if not os.path.isfile(data.dataset):
        raise ConfigError(f"config [data] dataset: {data.dataset!r} is neither 'default' nor an existing file")
    return ReferenceDataset(data.dataset)


def _split(config: DataConfig, names: list[str], atoms: set[str]) -> dict[str, str]:
    """molecule name -> 'train' | 'validation' | 'test' | 'shared'."""
    shared = set(atoms if config.shared is None else config.shared)
    for n in shared:
        if n not in names:
            raise ConfigError(f"config [data] shared: {n!r} is not among the molecules of the run")
    out = {n: "shared" for n in shared}
    for split, listed in zip(SPLITS, (config.train, config.validation, config.test)):
        for n in listed:
            if n not in names:
                raise ConfigError(f"config [data] {split}: no molecule {n!r} in the dataset (it has {', '.join(names)})")
            if n in shared:
                raise ConfigError(f"config [data] {split}: {n!r} is shared by every split")
            out[n] = split
    rest = [n for n in names if n not in out]
    if rest:
        order = np.random.default_rng(config.split_seed).permutation(len(rest))
        fractions = np.asarray(config.split) / sum(config.split)
        counts = np.floor(fractions * len(rest)).astype(int)
        for k in np.argsort(-(fractions * len(rest) - counts))[: len(rest) - counts.sum()]:
            counts[k] += 1
        start = 0
        for split, count in zip(SPLITS, counts):
            for j in order[start : start + count]:
                out[rest[j]] = split
            start += count
    if not any(v == "train" for v in out.values()):
        raise ConfigError("config [data]: the training split is empty")
    return out


def _prepare(config: TrainConfig, functional: AbstractFunctional) -> _Prepared:
    dataset = _open_dataset(config.data)
    names = list(config.data.molecules) or list(dataset.names)
    for n in names:
        if n not in dataset.names:
            raise ConfigError(f"config [data] molecules: no molecule {n!r} in {dataset.path}")
    target = config.data.target
    missing = [n for n in names if target.lower() not in dataset.methods(n)]
    if missing:
        raise ConfigError(f"config [data] target: no {target!r} labels for {', '.join(missing)} in {dataset.path}")
    molecules = {n: dataset.molecule(n) for n in names}
    atoms = {n for n, m in molecules.items() if len(m.symbols) == 1}
    split_of = _split(config.data, names, atoms)

    spec = required_grid_operators(functional)
    systems = [System.from_pyscf(molecules[n].to_mole(dataset.basis), grid_level=dataset.grid_level,
                                 grid_operators=spec if spec else None) for n in names]
    batches = make_batches(systems, max_buckets=config.data.max_buckets)
    targets, weights = [], []
    for b in batches:
        t = L.Targets.from_dataset(b, dataset, names, target)
        if (config.loss.density or config.loss.non_self_consistent) and t.density_matrix is None:
            raise ConfigError(f"config [loss]: density and non_self_consistent terms need {target!r} density "
                              f"matrices, which {dataset.path} does not hold")
        rows = [names[int(i)] if m else None for i, m in zip(np.asarray(b.index), np.asarray(b.mask))]
        w = np.array([[1.0 if n is not None and (split_of[n] == s or (s == "train" and split_of[n] == "shared"))
                       else 0.0 for n in rows] for s in SPLITS])
        targets.append(t)
        weights.append(jnp.asarray(w))

    target_energy = {n: float(dataset.entry(n, target).energy) for n in names}
    # Atomization energies of the target method for every non-atomic molecule whose atoms are there.
    by_element = {molecules[n].symbols[0]: n for n in atoms}
    reaction_names, species, reference, rweights = [], [], [], []
    experiment = None
    if config.data.atomization_reference == "experiment":
        from .data import g2

        experiment = {r.name: r.reference for r in g2("g2").reactions}
    for n in names:
        if n in atoms or split_of[n] == "shared":
            continue
        mol = molecules[n]
        if mol.charge != 0 or any(s not in by_element for s in mol.symbols):
            continue
        counts: dict[str, float] = {}
        for s in mol.symbols:
            counts[by_element[s]] = counts.get(by_element[s], 0.0) + 1.0
        counts[n] = -1.0
        if experiment is not None and n not in experiment:
            raise ConfigError(f"config [data] atomization_reference: no experimental G2 atomization energy for {n!r}")
        reaction_names.append(n)
        species.append(counts)
        reference.append(sum(c * target_energy[m] for m, c in counts.items()) if experiment is None
                         else experiment[n])
        rweights.append([1.0 if split_of[n] == s else 0.0 for s in SPLITS])
    if config.loss.atomization and not reaction_names:
        raise ConfigError("config [loss] atomization: no molecule has all its free atoms in the run")
    reactions = reaction_weights = None
    if reaction_names:
        c = np.zeros((len(reaction_names), len(names)))
        for r, counts in enumerate(species):
            for m, coef in counts.items():
                c[r, names.index(m)] = coef
        reactions = L.Reactions(c, np.asarray(reference))
        reaction_weights = jnp.asarray(np.asarray(rweights).T)
    data = _StepData(batches, targets, weights, reactions, reaction_weights)
    return _Prepared(names, split_of, dataset, systems, data, reaction_names, species, np.asarray(reference),
                     target_energy)


# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


def _split_losses(functional, data: _StepData, results, loss: tuple):
    """(3,) losses of the splits and a dict of (3,) per-term values."""
    weights, kind, metric = dict(loss[0]), loss[1], loss[2]
    terms = {}
    per_molecule = {"energy": "energy", "density": "density", "non_self_consistent": "nsc"}
    for term in LOSS_TERMS:
        if term not in weights:
            continue
        if term == "atomization":
            values = [L.reaction_loss(functional, data.batches,
                                      dataclasses.replace(data.reactions, weight=data.reaction_weights[s]),
                                      kind=kind, results=results) for s in range(3)]
            terms[term] = jnp.stack(values)
            continue
        sums, norms = jnp.zeros(3), jnp.zeros(3)
        for b, t, w, r in zip(data.batches, data.targets, data.molecule_weights, results):
            for s in range(3):
                ts = dataclasses.replace(t, weight=w[s])
                if per_molecule[term] == "energy":
                    v = L.energy_loss(functional, b, ts, kind=kind, reduction="sum", result=r)
                elif per_molecule[term] == "density":
                    v = L.density_loss(functional, b, ts, metric=metric, reduction="sum", result=r)
                else:
                    v = L.non_self_consistent_loss(functional, b, ts, kind=kind, reduction="sum")
                sums = sums.at[s].add(v)
                norms = norms.at[s].add(jnp.sum(jnp.where(b.mask, w[s], 0.0)))
        terms[term] = sums / jnp.where(norms > 0, norms, 1.0)
    total = sum(weights[t] * terms[t] for t in terms)
    return total, terms


@functools.cache
def _adjoint() -> optx.ImplicitAdjoint:
    """nlxc's default implicit adjoint, its linear solver failing as a value (`FailAsValue`)."""
    from .scf import FailAsValue, ImplicitAdjoint, SCFImplicitAdjoint

    return SCFImplicitAdjoint(linear_solver=FailAsValue(ImplicitAdjoint().linear_solver))


def _solve_from(functional, system, guess, max_scf_steps):
    """The vmapped SCF of a batch, started from `guess` (the last converged density matrices).

    Without the stability analysis of open shells (`stability=None`): each step starts from the
    minimum the last step converged to, which a small parameter update moves continuously, and
    under `jax.vmap` the analysis (about 48 Fock builds) would run for the whole open-shell
    batch at every step. Evaluation (`nlxc.evaluation`) keeps `solve`'s default analysis."""
    from .scf import solve

    return eqx.filter_vmap(lambda s, p: solve(functional, s, initial_density_matrix=p, max_steps=max_scf_steps,
                                              adjoint=_adjoint(), stability=None))(system, guess)


def _initial_guesses(data: _StepData) -> list[jax.Array]:
    return [b.system.initial_density_matrix for b in data.batches]


# Why a step failed: bits of `_StepOutput.failure` (0: the step succeeded).
_LOSS_NOT_FINITE, _GRADIENT_NOT_FINITE, _SCF_FAILED, _UPDATE_NOT_FINITE = 1, 2, 4, 8


class _Carry(eqx.Module):
    """What a step changes: the trainable parameters, the optimiser state, the SCF starting
    points (per batch, `(batch, 2, nao, nao)`)."""

    params: Any
    opt_state: Any
    guesses: list


class _StepOutput(eqx.Module):
    """What a compiled step returns.

    - `carry`: the next step's input: the updated parameters and optimiser state and the
      converged densities if `ok`; else the input's parameters and optimiser state and the
      Systems' initial guesses.
    - `ok`, `failure`: whether the update was accepted; the `_*` bits of why not.
    - `losses` `(3,)`, `terms` (per loss term, `(3,)`), `energies`, `converged` (per batch),
      `grad_norm`: at the *input* parameters.
    """

    carry: _Carry
    ok: jax.Array
    failure: jax.Array
    losses: jax.Array
    terms: dict
    energies: list
    converged: list
    grad_norm: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
def _step(carry: _Carry, static, data: _StepData, optimizer, loss: tuple, max_scf_steps: int) -> _StepOutput:
    """One optimisation step; also returns the energies and losses at the *input* parameters.

    Each SCF starts from the density matrix its molecule converged to in the previous step
    (`carry.guesses`; a molecule whose SCF did not converge restarts from the System's guess), so
    after the first step a few iterations suffice. The fixed point, hence the loss and its
    implicit gradient, does not depend on the starting point (up to the SCF tolerance).

    A failure is a value: if the training loss, the gradient or its norm (a failed adjoint solve
    makes it overflow, see `nlxc.scf.FailAsValue`), the new parameters or the new optimiser state are not
    finite, or the SCF of a molecule with a training weight did not converge, the step keeps its
    input parameters and optimiser state (`jnp.where`) and the next one starts from the Systems'
    initial guesses.
    """

    def objective(p):
        functional = eqx.combine(p, static)
        results = [_solve_from(functional, b.system, g, max_scf_steps) for b, g in zip(data.batches, carry.guesses)]
        total, terms = _split_losses(functional, data, results, loss)
        aux = (total, terms, [r.energy for r in results], [r.converged for r in results],
               [jax.lax.stop_gradient(r.density_matrix) for r in results])
        return total[0], aux

    (_, aux), grads = eqx.filter_value_and_grad(objective, has_aux=True)(carry.params)
    total, terms, energies, converged, densities = aux
    updates, opt_state = optimizer.update(grads, carry.opt_state, carry.params)
    params = eqx.apply_updates(carry.params, updates)

    scf_ok = jnp.all(jnp.stack([jnp.all(c | ~(b.mask & (w[0] > 0)))
                                for b, w, c in zip(data.batches, data.molecule_weights, converged)]))
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    failure = (jnp.where(jnp.isfinite(total[0]), 0, _LOSS_NOT_FINITE)
               | jnp.where(_all_finite(grads) & jnp.isfinite(grad_norm), 0, _GRADIENT_NOT_FINITE)
               | jnp.where(scf_ok, 0, _SCF_FAILED)
               | jnp.where(_all_finite(params) & _all_finite(opt_state), 0, _UPDATE_NOT_FINITE))
    ok = failure == 0

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)

    initial = _initial_guesses(data)
    warm = [jnp.where(c[:, None, None, None], p, g0) for c, p, g0 in zip(converged, densities, initial)]
    next_carry = _Carry(keep(params, carry.params), keep(opt_state, carry.opt_state),
                        [jnp.where(ok, g, g0) for g, g0 in zip(warm, initial)])
    return _StepOutput(next_carry, ok, failure, total, terms, energies, converged, grad_norm)


class _StepRaised(Exception):
    """The compiled step raised at run time (e.g. an `equinox.error_if` check of a model)."""


def _wait(tree) -> None:
    """Wait for the arrays of `tree` in Python (short sleeps), not in XLA: a Ctrl-C then
    interrupts the wait at once instead of after the step."""
    for x in jax.tree.leaves(tree):
        is_ready = getattr(x, "is_ready", None)
        while is_ready is not None and not is_ready():
            time.sleep(0.005)


def _run_step(carry: _Carry, static, data: _StepData, optimizer, loss: tuple, max_scf_steps: int) -> _StepOutput:
    """`_step` on the host: its output as numpy arrays, or `_StepRaised` (one line)."""
    try:
        out = _step(carry, static, data, optimizer, loss, max_scf_steps)
        _wait(out)
        return jax.device_get(out)
    except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise _StepRaised(text[:300]) from None


# --------------------------------------------------------------------------------------------
# Training state and checkpoints
# --------------------------------------------------------------------------------------------


class TrainState(eqx.Module):
    """The resumable state of a run: what `last.eqx` holds (`eqx.tree_serialise_leaves`).

    - `params`: the trainable leaves of the functional (`eqx.partition` by `trainable`) at `step`.
    - `opt_state`: the optax state; `guesses`: per batch, the SCF starting density matrices.
    - `best_params`: the parameters with the lowest monitored loss so far, from step `best_step`
      (loss `best_value`); `since_best`: steps since then.
    - `step`: the next step to take; `failures`: consecutive failed steps just before it;
      `wall_s`: training time so far.

    The counters are 0-d numpy arrays (they are written with `np.save`, without XLA).
    """

    params: Any
    opt_state: Any
    guesses: list
    best_params: Any
    step: np.ndarray
    best_step: np.ndarray
    best_value: np.ndarray
    since_best: np.ndarray
    failures: np.ndarray
    wall_s: np.ndarray


def _counters(step, best_step, best_value, since_best, failures, wall_s) -> dict:
    return {"step": np.asarray(step, np.int64), "best_step": np.asarray(best_step, np.int64),
            "best_value": np.asarray(best_value, np.float64), "since_best": np.asarray(since_best, np.int64),
            "failures": np.asarray(failures, np.int64), "wall_s": np.asarray(wall_s, np.float64)}


CHECKPOINT_FORMAT = "nlxc-checkpoint"
CHECKPOINT_VERSION = 2
MANIFEST = "manifest.json"
# Every file `train` may write in output_dir (besides MANIFEST and its hidden temporary files).
OUTPUT_FILES = ("config.json", "metrics.jsonl", "last.eqx", "last.json", "best.eqx", "best.json", "final.eqx",
                "final.json", "results.json", "results.md", "learning_curve.png", "parity.png", "baselines.h5")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_bytes(path: str, data: bytes) -> None:
    """Write `data` to a hidden temporary file beside `path`, fsync it, and rename it to `path`
    (atomic: a kill at any moment leaves the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: str, obj) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _read_json(path: str, what: str):
    """The JSON content of `path`, or InputError naming it (unreadable, not UTF-8, not JSON)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text (corrupt file)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {path} is not valid JSON (truncated or corrupt: {err.msg} at line "
                         f"{err.lineno})") from None


def _sidecar_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def _read_sidecar(path: str) -> dict:
    """The sidecar of checkpoint `path` (its config and, since format 2, the SHA-256 of its bytes)."""
    sidecar = _sidecar_path(path)
    meta = _read_json(sidecar, "checkpoint sidecar")
    if not isinstance(meta, dict) or "config" not in meta:
        raise InputError(f"checkpoint sidecar {sidecar} holds no config (not written by nlxc train)")
    version = meta.get("format_version")
    if meta.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT or (
            version is not None and (not isinstance(version, int) or version > CHECKPOINT_VERSION)):
        raise InputError(f"checkpoint sidecar {sidecar} has format {meta.get('format')!r} version {version!r}; "
                         f"this nlxc reads {CHECKPOINT_FORMAT!r} up to version {CHECKPOINT_VERSION} (upgrade nlxc)")
    return meta


def _sidecar_config(path: str, meta: dict) -> TrainConfig:
    try:
        return TrainConfig.from_dict(meta["config"], written=True)
    except ConfigError as err:
        raise InputError(f"checkpoint sidecar {_sidecar_path(path)}: {err}") from None


def _read_checkpoint(path: str, meta: dict) -> bytes:
    """The bytes of checkpoint `path`, verified against the SHA-256 of its sidecar `meta`.

    A sidecar is written before its checkpoint and names the checkpoint's previous digest too,
    so a kill between the two renames leaves the previous, complete checkpoint, which is
    accepted. A sidecar of the old format (no `format`) has no digest: the bytes are returned
    unverified (the caller warns)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise InputError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if "format" not in meta:
        return data
    digest = _sha256(data)
    if digest != meta.get("sha256") and digest != meta.get("previous_sha256"):
        raise InputError(f"checkpoint {path} does not match the SHA-256 in {os.path.basename(_sidecar_path(path))} "
                         "(corrupt, truncated or modified); it was not loaded")
    return data


def _write_checkpoint(path: str, tree, sidecar: dict) -> None:
    """`tree` (numpy leaves) to `path` with its sidecar: sidecar first (new and previous digest),
    then the checkpoint, each atomically."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    data = buffer.getvalue()
    previous = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            previous = _sha256(f.read())
    _write_json(_sidecar_path(path), {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **sidecar,
                                      "sha256": _sha256(data), "previous_sha256": previous})
    _write_bytes(path, data)


def _save_state(out: str, config: TrainConfig, state: TrainState) -> None:
    """`last.eqx`/`last.json`. `state` must be on the host (numpy), so that an interruption can
    write it while XLA still compiles or runs a step in its own threads."""
    if not (all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
            and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.best_params))):
        raise TrainingError(f"refusing to checkpoint non-finite parameters at step {int(state.step)}; "
                            f"{out}/last.eqx keeps the last good state")  # pragma: no cover (the step rejects them)
    info = {k: (float(v) if k in ("best_value", "wall_s") else int(v))
            for k, v in _counters(state.step, state.best_step, state.best_value, state.since_best, state.failures,
                                  state.wall_s).items()}
    _write_checkpoint(os.path.join(out, "last.eqx"), state, {"kind": "state", "config": config.to_dict(), **info})


def _save_functional(path: str, config: TrainConfig, functional, meta: dict) -> None:
    _write_checkpoint(path, jax.device_get(functional), {"kind": "functional", "config": config.to_dict(), **meta})


def load_checkpoint(path: str | os.PathLike) -> tuple[AbstractFunctional, TrainConfig]:
    """The trained functional of a checkpoint written by [`train`][nlxc.train.train].

    **Arguments:** `path`, a functional checkpoint (`best.eqx`, or `final.eqx`) or a run
    directory (then its `best.eqx`). Its JSON sidecar (same name, `.json`) holds the config and
    the SHA-256 of the checkpoint's bytes, which is verified. (Checkpoints of nlxc versions
    before the checksums load unverified, with a warning.)

    **Returns:** `(functional, config)`: the functional with the trained parameters, and the
    [`TrainConfig`][nlxc.train.TrainConfig] of the run (its `[data]` names the basis and grid).

    **Raises:** [`nlxc.InputError`][] (one line, naming the file) for a missing file or
    sidecar, a sidecar that is not UTF-8 JSON (truncated) or holds no valid config, a
    checkpoint that does not match its SHA-256 (corrupt or modified), a resumable state
    (`last.eqx`) instead of a functional, or a file that does not hold parameters of the
    functional the config describes.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "best.eqx")
    sidecar = _sidecar_path(path)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(sidecar):
        raise InputError(f"checkpoint {path!r} has no {os.path.basename(sidecar)} beside it (its config)")
    meta = _read_sidecar(path)
    if meta.get("kind") == "state":
        raise InputError(f"checkpoint {path!r} is the resumable training state of a run, not a functional; "
                         "load its best.eqx or final.eqx")
    config = _sidecar_config(path, meta)
    data = _read_checkpoint(path, meta)
    if "format" not in meta:
        warnings.warn(f"checkpoint {path} was written by an older nlxc without a checksum; it is loaded unverified",
                      stacklevel=2)
    like, _ = build_functional(config.model, config.run.seed)
    try:
        functional = eqx.tree_deserialise_leaves(io.BytesIO(data), like)
    except Exception as err:  # noqa: BLE001 — any unreadable content, reported as one line
        raise InputError(f"checkpoint {path!r} does not match the functional of its config: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from None
    return functional, config


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _energies_by_name(prepared: _Prepared, energies, converged) -> tuple[dict[str, float], dict[str, bool]]:
    e, c = {}, {}
    for b, eb, cb in zip(prepared.data.batches, energies, converged):
        for i, m, ei, ci in zip(np.asarray(b.index), np.asarray(b.mask), np.asarray(eb), np.asarray(cb)):
            if m:
                e[prepared.names[int(i)]] = float(ei)
                c[prepared.names[int(i)]] = bool(ci)
    return e, c


def _atomization(prepared: _Prepared, energies: dict[str, float]) -> dict[str, float]:
    return {r: sum(coef * energies[m] for m, coef in counts.items())
            for r, counts in zip(prepared.reaction_names, prepared.reaction_species)}


def _stats(errors_hartree) -> dict[str, float]:
    from .data import KCAL_PER_MOL  # Hartree per kcal/mol
    from .evaluation import error_statistics

    return error_statistics(np.asarray(list(errors_hartree), float) / KCAL_PER_MOL)


def _split_stats(prepared: _Prepared, energies: dict[str, float]) -> dict[str, dict]:
    """Errors (kcal/mol) of total and atomization energies per split, against the target."""
    atomization = _atomization(prepared, energies)
    reference = dict(zip(prepared.reaction_names, prepared.reaction_reference))
    out = {}
    for s in SPLITS:
        mols = [n for n in prepared.names if prepared.split_of[n] == s]
        out[s] = {
            "total_energy": _stats(energies[n] - prepared.target_energy[n] for n in mols if n in energies),
            "atomization": _stats(atomization[r] - reference[r] for r in prepared.reaction_names
                                  if prepared.split_of[r] == s),
        }
    return out


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What [`train`][nlxc.train.train] returns.

    - `functional`: the best functional (lowest validation loss; training loss if there is no
      validation split).
    - `final_functional`: the functional after the last step.
    - `best_step`, `steps`: the step of the best parameters and the number of steps taken.
    - `output_dir`: the run directory (metrics, checkpoints, plots, results).
    - `results`: the held-out evaluation (also in `results.json`), or `None` if the run
      was stopped before its end.
    """

    functional: AbstractFunctional
    final_functional: AbstractFunctional
    best_step: int
    steps: int
    output_dir: str
    results: dict | None


class _Outputs:
    """The files of a run directory that this run owns, kept in `manifest.json`.

    `train` writes only the files of `OUTPUT_FILES`, and only if they do not exist or are listed
    in the manifest (it wrote them): every name is claimed in the manifest before it is written.
    """

    def __init__(self, out: str, owned: set[str]):
        self.out, self.owned = out, set(owned)

    def claim(self, *names: str) -> None:
        new = [n for n in names if n not in self.owned]
        if not new:
            return
        foreign = [n for n in new if os.path.lexists(os.path.join(self.out, n))]
        if foreign:
            raise InputError(f"output_dir {self.out!r} now holds {', '.join(foreign)}, which this run did not write; "
                             "it was not overwritten")
        self.owned.update(new)
        _write_json(os.path.join(self.out, MANIFEST),
                    {"format": "nlxc-run-manifest", "files": sorted(self.owned)})


def _read_manifest(out: str) -> set[str] | None:
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return None
    meta = _read_json(path, "run manifest")
    if not (isinstance(meta, dict) and meta.get("format") == "nlxc-run-manifest" and isinstance(meta.get("files"), list)
            and all(isinstance(n, str) for n in meta["files"])):
        raise InputError(f"{path} is not a run manifest of nlxc train; choose another [run] output_dir "
                         "(nothing was written)")
    return set(meta["files"])


@dataclasses.dataclass
class _Resume:
    meta: dict  # last.json
    data: bytes  # last.eqx, verified


def _check_output_dir(config: TrainConfig) -> tuple[str, _Resume | None, set[str]]:
    """Before any work: the run directory, the verified checkpoint to resume from (or `None`),
    and the files of the directory this run owns.

    **Raises:** [`nlxc.InputError`][] if the directory holds a run of another configuration, a
    corrupt checkpoint, or files this run would write but did not write (e.g. the user's own
    `results.md`): nothing is ever overwritten that `train` did not write."""
    out = config.run.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output_dir {out!r} exists and is not a directory")
    if not os.path.isdir(out):
        return out, None, set()
    manifest = _read_manifest(out)
    last = os.path.join(out, "last.eqx")
    resume, previous = None, None
    if os.path.isfile(os.path.join(out, "last.json")):
        if not os.path.isfile(last):
            raise InputError(f"output_dir {out!r} holds last.json but not its checkpoint last.eqx; "
                             "choose another [run] output_dir (nothing was written)")
        meta = _read_sidecar(last)
        previous = _sidecar_config(last, meta)
        resume = _Resume(meta, b"")
    elif manifest is not None and "config.json" in manifest and os.path.isfile(os.path.join(out, "config.json")):
        # a run of ours that stopped before its first checkpoint: the same config starts it again
        path = os.path.join(out, "config.json")
        try:
            previous = TrainConfig.from_dict(_read_json(path, "run config"), written=True)
        except ConfigError as err:
            raise InputError(f"{path}: {err}") from None
    if previous is not None:
        changed = config.differences(previous)
        if changed:
            raise InputError(f"output_dir {out!r} holds a run with a different config ({', '.join(changed)} differ); "
                             "choose another [run] output_dir (nothing is overwritten)")
    if manifest is None and resume is not None:
        # a run of an nlxc before the manifest: the files of a resumable run of this config are its own
        manifest = {n for n in OUTPUT_FILES if os.path.lexists(os.path.join(out, n))}
    owned = manifest or set()
    foreign = sorted(n for n in OUTPUT_FILES if os.path.lexists(os.path.join(out, n)) and n not in owned)
    if foreign:
        raise InputError(f"output_dir {out!r} already holds {', '.join(foreign)}, which this run would write but did "
                         "not write; move them or choose another [run] output_dir (nothing was written)")
    if resume is not None:
        resume.data = _read_checkpoint(last, resume.meta)
        if "format" not in resume.meta:
            warnings.warn(f"checkpoint {last} was written by an older nlxc without a checksum; it is resumed "
                          "unverified", stacklevel=3)
    return out, resume, owned


def _resume_state(out: str, resume: _Resume, like: TrainState) -> TrainState:
    """The TrainState of a verified `last.eqx` (format 2: the state itself; the old format: the
    tuple `(params, opt_state, guesses, best_params)` with the counters in `last.json`)."""
    path = os.path.join(out, "last.eqx")
    meta = resume.meta
    try:
        if "format" in meta:
            state = eqx.tree_deserialise_leaves(io.BytesIO(resume.data), like)
        else:
            params, opt_state, guesses, best = eqx.tree_deserialise_leaves(
                io.BytesIO(resume.data), (like.params, like.opt_state, like.guesses, like.params))
            state = TrainState(params, opt_state, guesses, best,
                               **_counters(meta["step"], meta["best_step"], meta["best_value"], meta["since_best"], 0,
                                           meta["wall_s"]))
    except Exception as err:  # noqa: BLE001 — any unreadable content, reported as one line
        raise InputError(f"checkpoint {path} does not hold a training state of this config's model and data: "
                         f"{' '.join(str(err).split())[:200] or type(err).__name__}; choose another [run] "
                         "output_dir") from None
    return jax.device_get(state)


def _metrics_before(path: str, start: int) -> bytes:
    """The lines of `metrics.jsonl` before step `start` (a last line cut short by a kill is
    dropped; any other unreadable line is an InputError)."""
    if not os.path.isfile(path):
        return b""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            step = json.loads(line.decode("utf-8"))["step"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            if i == len(lines) - 1:
                break
            raise InputError(f"{path} line {i + 1} is not a metrics record (corrupt file); "
                             "choose another [run] output_dir") from None
        if isinstance(step, int) and step < start:
            kept.append(line + b"\n")
    return b"".join(kept)


def _failure_reason(code: int, prepared: _Prepared, converged: dict[str, bool]) -> str:
    parts = []
    if code & _LOSS_NOT_FINITE:
        parts.append("training loss not finite")
    if code & _GRADIENT_NOT_FINITE:
        parts.append("gradient not finite (or its adjoint solve failed)")
    if code & _SCF_FAILED:
        names = sorted(n for n, ok in converged.items() if not ok and prepared.split_of[n] in ("train", "shared"))
        parts.append(f"SCF not converged for {', '.join(names)}")
    if code & _UPDATE_NOT_FINITE:
        parts.append("update not finite")
    return "; ".join(parts)


class _InterruptGuard:
    """While `train` runs, Ctrl-C raises `KeyboardInterrupt` as usual, and raises it again every
    0.5 s until `train` has handled it.

    Python runs a SIGINT handler wherever the main thread is; when that is a garbage-collector
    or finaliser callback (JAX runs one at every collection), the `KeyboardInterrupt` is printed
    as "Exception ignored in ..." and lost, and the run would go on. Installed only in the main
    thread and only over Python's default handler (an application's own handler, or an ignored
    SIGINT, is left alone).
    """

    def __enter__(self):
        self.handled = threading.Event()
        self.resent = 0
        self.watchdog = None
        self.installed = (threading.current_thread() is threading.main_thread()
                          and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.handled.is_set() and self.resent > 0:
            self.resent -= 1  # a repetition that crossed `handle()`: the interruption is being handled
            return
        if self.watchdog is None and not self.handled.is_set():
            self.watchdog = threading.Thread(target=self._repeat, name="nlxc-interrupt", daemon=True)
            self.watchdog.start()
        raise KeyboardInterrupt

    def _repeat(self):
        main = threading.main_thread().ident
        while not self.handled.wait(0.5):
            self.resent += 1
            signal.pthread_kill(main, signal.SIGINT)

    def handle(self) -> None:
        """The interruption has reached `train`'s handler: stop repeating it."""
        self.handled.set()

    def __exit__(self, *exc):
        self.handled.set()
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return False


def train(config: TrainConfig | str | os.PathLike, *,
          callback: Callable[[int, dict], None] | None = None, evaluate: bool = True) -> TrainResult:
    """Train the functional of `config` through the SCF (see the module docstring).

    **Arguments:**

    - `config`: a [`TrainConfig`][nlxc.train.TrainConfig] or the path of a TOML/YAML file.
    - `callback`: called as `callback(step, metrics)` after every step (e.g. to stop a run by
      raising `KeyboardInterrupt`, which checkpoints first).
    - `evaluate`: at the end, evaluate the best functional on the test split beside the
      PySCF baselines of `[evaluation]` (written to `results.json` / `results.md` and printed).

    **Returns:** a [`TrainResult`][nlxc.train.TrainResult].

    **Raises:** [`ConfigError`][nlxc.train.ConfigError] for a bad configuration;
    [`nlxc.InputError`][] before any work if `output_dir` holds a run of a different config, a
    corrupt checkpoint, or files this run would write but did not write;
    [`TrainingError`][nlxc.train.TrainingError] after `[training] max_failed_steps`
    consecutive failed steps (the last good state checkpointed);
    `nlxc.train.TrainingInterrupted` (a `KeyboardInterrupt`) after
    writing a checkpoint of the last completed step (none before the first step).
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config)
    out, resume, owned = _check_output_dir(config)
    with _InterruptGuard() as guard:
        try:
            return _train(config, out, resume, owned, guard, callback, evaluate)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # before the training loop (building the Systems) or after it (evaluation): the
            # checkpoint, if any, is complete; JAX may be compiling in its own threads
            guard.handle()
            last, step = os.path.join(out, "last.eqx"), None
            if os.path.isfile(last):
                try:
                    step = int(_read_sidecar(last)["step"])
                except (InputError, KeyError, TypeError, ValueError):
                    step = None
            if step is not None:
                message = f"interrupted: checkpoint at step {step} in {out}; run the same config again to resume"
            else:
                message = f"interrupted: no checkpoint in {out}; run the same config again to start"
            print(message)
            raise TrainingInterrupted(message, checkpoint=last if step is not None else None, step=step,
                                      pending=True) from None


def _train(config: TrainConfig, out: str, resume: _Resume | None, owned: set[str], guard: _InterruptGuard,
           callback, evaluate: bool) -> TrainResult:
    functional, trainable = build_functional(config.model, config.run.seed)
    prepared = _prepare(config, functional)  # before creating output_dir: bad data leaves nothing behind
    os.makedirs(out, exist_ok=True)
    outputs = _Outputs(out, owned)
    outputs.claim("config.json", "metrics.jsonl")
    _write_json(os.path.join(out, "config.json"), config.to_dict())

    steps = config.training.steps
    optimizer = build_optimizer(config.optimizer, steps)
    params, static = eqx.partition(functional, trainable)
    state = jax.device_get(TrainState(params, optimizer.init(params), _initial_guesses(prepared.data), params,
                                      **_counters(0, 0, math.inf, 0, 0, 0.0)))
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume is not None:
        state = _resume_state(out, resume, state)
        _write_bytes(metrics_path, _metrics_before(metrics_path, int(state.step)))
        print(f"resuming {out} from step {int(state.step)}")
    elif os.path.isfile(metrics_path):
        os.remove(metrics_path)  # ours (claimed above), of a run of this config stopped before its first checkpoint
    max_failed = config.training.max_failed_steps
    if int(state.failures) >= max_failed:
        raise TrainingError(f"the run in {out} stopped after {int(state.failures)} consecutive failed steps before "
                            f"step {int(state.step)} (reasons in metrics.jsonl); its last.eqx holds the parameters "
                            "before them; change the config (e.g. [optimizer] learning_rate) and train in another "
                            "[run] output_dir")

    loss_key = (tuple(sorted(config.loss.weights().items())), config.loss.kind, config.loss.density_metric)
    has_validation = any(v == "validation" for v in prepared.split_of.values())
    monitor = 1 if has_validation else 0
    t_start = time.perf_counter()
    wall0 = float(state.wall_s)
    start = int(state.step)
    saved = {"step": start if resume is not None else None}  # the step of the checkpoint on disk
    progress = None
    if config.training.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps, initial=min(start, steps), desc=f"training {config.run.name}", unit="step")

    def checkpoint(s: TrainState) -> None:
        outputs.claim("last.eqx", "last.json")
        _save_state(out, config, s)
        saved["step"] = int(s.step)

    def args(s: TrainState, guesses=None):
        carry = _Carry(s.params, s.opt_state, s.guesses if guesses is None else guesses)
        return carry, static, prepared.data, optimizer, loss_key, config.training.max_scf_steps

    last_step = None  # (energies, converged, input guesses) of the last step taken
    initial_energies = None
    pending = False  # XLA may be compiling or running a step
    try:
        while True:
            step = int(state.step)
            pending = True
            try:
                o = _run_step(*args(state))
            except _StepRaised as err:
                pending = False
                if saved["step"] != step:
                    checkpoint(state)
                raise TrainingError(f"step {step} raised: {err}; the last good state (step {step}) is in "
                                    f"{os.path.join(out, 'last.eqx')}") from None
            pending = False
            ok, code = bool(o.ok), int(o.failure)
            totals = np.asarray(o.losses)
            e, c = _energies_by_name(prepared, o.energies, o.converged)
            if step == 0:
                initial_energies = e
            stats = _split_stats(prepared, e)
            value = float(totals[monitor])
            best = {"best_params": state.best_params, "best_step": int(state.best_step),
                    "best_value": float(state.best_value), "since_best": int(state.since_best) + 1}
            if ok and value < best["best_value"]:
                best.update(best_params=state.params, best_step=step, best_value=value, since_best=0)
            failures = 0 if ok else int(state.failures) + 1
            record = {"step": step, "ok": ok}
            if not ok:
                record["reason"] = _failure_reason(code, prepared, c)
            record.update({
                "loss": {s: float(v) for s, v in zip(SPLITS, totals)},
                "terms": {t: [float(x) for x in np.asarray(v)] for t, v in o.terms.items()},
                "mae_kcal": {s: {k: stats[s][k]["mae"] for k in stats[s]} for s in SPLITS},
                "grad_norm": float(o.grad_norm),
                "not_converged": sorted(n for n, conv in c.items() if not conv),
                "wall_s": wall0 + time.perf_counter() - t_start,
            })
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            last_step = (e, c, state.guesses)
            if progress is not None and step > start:
                progress.update(1)
            if progress is not None:
                progress.set_postfix(loss=f"{totals[0]:.3g}", val=f"{totals[1]:.3g}", refresh=False)
            counters = {**{k: v for k, v in best.items() if k != "best_params"}, "failures": failures,
                        "wall_s": wall0 + time.perf_counter() - t_start}
            if step >= steps or (config.training.patience and best["since_best"] >= config.training.patience):
                state = dataclasses.replace(state, best_params=best["best_params"],
                                            **_counters(step=step, **counters))
                break
            state = TrainState(o.carry.params, o.carry.opt_state, o.carry.guesses, best["best_params"],
                               **_counters(step=step + 1, **counters))
            if failures >= max_failed:
                checkpoint(state)
                raise TrainingError(f"{failures} consecutive failed steps ({step - failures + 1} to {step}; the last: "
                                    f"{record['reason']}); the parameters before them are checkpointed in "
                                    f"{os.path.join(out, 'last.eqx')} (see metrics.jsonl)")
            if int(state.step) % config.training.checkpoint_every == 0:
                checkpoint(state)
            if callback is not None:
                callback(int(state.step), record)
    except KeyboardInterrupt:
        guard.handle()
        if progress is not None:
            progress.close()
        try:
            if int(state.step) != (saved["step"] if saved["step"] is not None else 0):
                checkpoint(state)  # host arrays only: safe while XLA still works in its own threads
        except KeyboardInterrupt:
            pass  # a second Ctrl-C while writing: the previous checkpoint is intact (atomic writes)
        where = os.path.join(out, "last.eqx")
        if saved["step"] is not None and os.path.isfile(where):
            message = (f"interrupted: checkpoint at step {saved['step']} in {out}; run the same config again to "
                       "resume")
        else:
            where = None
            message = f"interrupted before the first step: no checkpoint in {out}; run the same config again to start"
        print(message)
        raise TrainingInterrupted(message, checkpoint=where, step=saved["step"] if where else None,
                                  pending=pending) from None
    if progress is not None:
        progress.close()
    checkpoint(state)
    steps_done = int(state.step)
    final_functional = eqx.combine(jax.tree.map(jnp.asarray, state.params), static)
    best_params = state.best_params
    best_functional = eqx.combine(jax.tree.map(jnp.asarray, best_params), static)
    done = {"best_step": int(state.best_step), "best_value": float(state.best_value), "steps": steps_done}
    outputs.claim("best.eqx", "best.json", "final.eqx", "final.json")
    _save_functional(os.path.join(out, "best.eqx"), config, best_functional, done)
    _save_functional(os.path.join(out, "final.eqx"), config, final_functional, done)

    results = None
    if evaluate:
        if int(state.best_step) == steps_done:
            best_energies, best_converged = last_step[0], last_step[1]
        else:
            fresh = jax.device_get(optimizer.init(best_params))
            try:
                o = _run_step(*args(dataclasses.replace(state, params=best_params, opt_state=fresh),
                                    guesses=last_step[2]))
            except _StepRaised as err:
                raise TrainingError(f"evaluating the best parameters raised: {err}; they are in "
                                    f"{os.path.join(out, 'best.eqx')}") from None
            best_energies, best_converged = _energies_by_name(prepared, o.energies, o.converged)
        from .evaluation import held_out_report

        outputs.claim("results.json", "results.md", "parity.png", "baselines.h5")
        results = held_out_report(config, prepared, best_energies, best_converged, initial_energies, out)
    if config.training.plots:
        from .evaluation import plot_learning_curve

        outputs.claim("learning_curve.png")
        plot_learning_curve(metrics_path, os.path.join(out, "learning_curve.png"))
    return TrainResult(best_functional, final_functional, int(state.best_step), steps_done, out, results)
