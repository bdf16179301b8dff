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
configuration is never overwritten: `train` raises instead.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

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
    "TrainingConfig",
    "TrainingError",
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
    """Training cannot go on: the loss became NaN/inf (the last good state is checkpointed)."""


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


def build_functional(model: ModelConfig, seed: int = 0) -> tuple[AbstractFunctional, Any]:
    """The functional `baseline + correction` of a `[model]` section, and which leaves train.

    **Arguments:** `model`, a [`ModelConfig`][nlxc.train.ModelConfig]; `seed` of the
    correction's initialisation (`jax.random.key(seed)`).

    **Returns:** `(functional, trainable)`: an [`nlxc.xc.AbstractFunctional`][] and a pytree
    of booleans of the same structure (`True` for the float arrays that are optimised: those
    of the correction, and those of the baseline if `train_baseline`), for `eqx.partition`.

    **Raises:** [`ConfigError`][nlxc.train.ConfigError] for an unknown baseline or correction
    name, or an option the correction's constructor does not take (one line, naming it).
    """
    import inspect

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


def _solve_from(functional, system, guess, max_scf_steps):
    """The vmapped SCF of a batch, started from `guess` (the last converged density matrices)."""
    from .scf import solve

    return eqx.filter_vmap(lambda s, p: solve(functional, s, initial_density_matrix=p, max_steps=max_scf_steps))(
        system, guess)


def _guarded_step(*args):
    """`(_step(*args), None)`, or `(None, reason)` if it raised or gave a non-finite loss or gradient."""
    try:
        outcome = _step(*args)
        total, grad_norm = float(outcome[3][0][0]), float(outcome[4])
    except Exception as err:  # noqa: BLE001 — equinox/XLA runtime errors (e.g. a failed adjoint solve)
        if not any(t.__name__ in ("EquinoxRuntimeError", "XlaRuntimeError", "JaxRuntimeError")
                   for t in type(err).__mro__):
            raise
        return None, str(err).strip().splitlines()[0]
    if not (math.isfinite(total) and math.isfinite(grad_norm)):
        return None, f"training loss {total}, gradient norm {grad_norm}"
    return outcome, None


def _initial_guesses(data: _StepData) -> list[jax.Array]:
    return [b.system.initial_density_matrix for b in data.batches]


@eqx.filter_jit
def _step(params, opt_state, guesses, static, data: _StepData, optimizer, loss: tuple, max_scf_steps: int):
    """One optimisation step; also returns the energies and losses at the *input* parameters.

    Each SCF starts from the density matrix its molecule converged to in the previous step
    (`guesses`; a molecule whose SCF did not converge restarts from the System's guess), so after
    the first step a few iterations suffice. The fixed point, hence the loss and its implicit
    gradient, does not depend on the starting point (up to the SCF tolerance).
    """

    def objective(p):
        functional = eqx.combine(p, static)
        results = [_solve_from(functional, b.system, g, max_scf_steps) for b, g in zip(data.batches, guesses)]
        total, terms = _split_losses(functional, data, results, loss)
        aux = (total, terms, [r.energy for r in results], [r.converged for r in results],
               [jax.lax.stop_gradient(r.density_matrix) for r in results])
        return total[0], aux

    (_, aux), grads = eqx.filter_value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = eqx.apply_updates(params, updates)
    converged, densities = aux[3], aux[4]
    new_guesses = [jnp.where(c[:, None, None, None], p, b.system.initial_density_matrix)
                   for c, p, b in zip(converged, densities, data.batches)]
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads)))
    return params, opt_state, new_guesses, aux[:4], grad_norm


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    _atomic_write(path, write)


def _save_state(out: str, config: TrainConfig, step: int, params, opt_state, guesses, best_params,
                meta: dict) -> None:
    _atomic_write(os.path.join(out, "last.eqx"),
                  lambda tmp: eqx.tree_serialise_leaves(tmp, (params, opt_state, guesses, best_params)))
    _write_json(os.path.join(out, "last.json"), {"config": config.to_dict(), "step": step, **meta})


def _save_functional(path: str, config: TrainConfig, functional, meta: dict) -> None:
    _atomic_write(path, lambda tmp: eqx.tree_serialise_leaves(tmp, functional))
    _write_json(os.path.splitext(path)[0] + ".json", {"config": config.to_dict(), **meta})


def load_checkpoint(path: str | os.PathLike) -> tuple[AbstractFunctional, TrainConfig]:
    """The trained functional of a checkpoint written by [`train`][nlxc.train.train].

    **Arguments:** `path`, a functional checkpoint (`best.eqx`, or `final.eqx`) or a run
    directory (then its `best.eqx`). Its JSON sidecar (same name, `.json`) holds the config.

    **Returns:** `(functional, config)`: the functional with the trained parameters, and the
    [`TrainConfig`][nlxc.train.TrainConfig] of the run (its `[data]` names the basis and grid).

    **Raises:** [`nlxc.InputError`][] for a missing file or sidecar, or a file that does not
    hold parameters of the functional the config describes.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "best.eqx")
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(sidecar):
        raise InputError(f"checkpoint {path!r} has no {os.path.basename(sidecar)} beside it (its config)")
    with open(sidecar) as f:
        meta = json.load(f)
    if "config" not in meta:
        raise InputError(f"{sidecar} holds no config")
    config = TrainConfig.from_dict(meta["config"])
    like, _ = build_functional(config.model, config.run.seed)
    try:
        functional = eqx.tree_deserialise_leaves(path, like)
    except Exception as err:
        raise InputError(f"checkpoint {path!r} does not match the functional of its config: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
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


def _check_output_dir(config: TrainConfig) -> tuple[str, dict | None]:
    out = config.run.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output_dir {out!r} exists and is not a directory")
    last = os.path.join(out, "last.json")
    if not os.path.isfile(last):
        if os.path.isdir(out) and any(f in os.listdir(out) for f in ("metrics.jsonl", "best.eqx", "config.json")):
            raise InputError(f"output_dir {out!r} holds files of another run but no checkpoint; "
                             "choose another [run] output_dir (nothing is overwritten)")
        return out, None
    with open(last) as f:
        meta = json.load(f)
    previous = TrainConfig.from_dict(meta["config"])
    changed = config.differences(previous)
    if changed:
        raise InputError(f"output_dir {out!r} holds a run with a different config ({', '.join(changed)} differ); "
                         "choose another [run] output_dir (nothing is overwritten)")
    return out, meta


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
    [`nlxc.InputError`][] if `output_dir` holds a different run; [`TrainingError`][nlxc.train.TrainingError]
    if the loss becomes NaN/inf; `KeyboardInterrupt` after writing a checkpoint.
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config)
    out, resume = _check_output_dir(config)
    functional, trainable = build_functional(config.model, config.run.seed)
    prepared = _prepare(config, functional)  # before creating output_dir: bad data leaves nothing behind
    os.makedirs(out, exist_ok=True)
    _write_json(os.path.join(out, "config.json"), config.to_dict())

    steps = config.training.steps
    optimizer = build_optimizer(config.optimizer, steps)
    params, static = eqx.partition(functional, trainable)
    opt_state = optimizer.init(params)
    guesses = _initial_guesses(prepared.data)
    best_params, start = params, 0
    meta = {"best_value": math.inf, "best_step": 0, "since_best": 0, "wall_s": 0.0}
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume is not None:
        params, opt_state, guesses, best_params = eqx.tree_deserialise_leaves(
            os.path.join(out, "last.eqx"), (params, opt_state, guesses, params))
        start = int(resume["step"])
        meta = {k: resume[k] for k in meta}
        kept = []
        if os.path.isfile(metrics_path):
            with open(metrics_path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] < start]
        with open(metrics_path, "w") as f:
            f.writelines(kept)
        print(f"resuming {out} from step {start}")
    elif os.path.isfile(metrics_path):
        os.remove(metrics_path)

    loss_key = (tuple(sorted(config.loss.weights().items())), config.loss.kind, config.loss.density_metric)
    has_validation = any(v == "validation" for v in prepared.split_of.values())
    monitor = 1 if has_validation else 0
    t_start = time.perf_counter()
    wall0 = meta["wall_s"]
    progress = None
    if config.training.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps, initial=min(start, steps), desc=f"training {config.run.name}", unit="step")
    state = (params, opt_state, guesses, start)

    def checkpoint():
        p, o, g, s = state
        _save_state(out, config, s, p, o, g, best_params,
                    {**meta, "wall_s": wall0 + time.perf_counter() - t_start})

    last_aux = None
    initial_energies = None
    try:
        step = start
        while step <= steps:
            params, opt_state, guesses, _ = state
            outcome, failure = _guarded_step(params, opt_state, guesses, static, prepared.data, optimizer, loss_key,
                                             config.training.max_scf_steps)
            restarted = False
            if outcome is None:
                # The adjoint linear solve can break down (BiCGStab) at an unlucky starting point;
                # the same step from the Systems' initial guesses converges to the same fixed points
                # by another path. Deterministic, so a resumed run takes the same decision.
                restarted = True
                outcome, failure = _guarded_step(params, opt_state, _initial_guesses(prepared.data), static,
                                                 prepared.data, optimizer, loss_key, config.training.max_scf_steps)
            if outcome is None:
                checkpoint()
                raise TrainingError(f"step {step} failed twice ({failure}); the last good state is checkpointed "
                                    f"in {out}/last.eqx")
            new_params, new_opt_state, new_guesses, aux, grad_norm = outcome
            totals, terms, energies, converged = aux
            totals = np.asarray(totals)
            e, c = _energies_by_name(prepared, energies, converged)
            if step == 0:
                initial_energies = e
            stats = _split_stats(prepared, e)
            value = float(totals[monitor])
            if value < meta["best_value"]:
                meta.update(best_value=value, best_step=step, since_best=0)
                best_params = params
            else:
                meta["since_best"] += 1
            record = {
                "step": step,
                "loss": {s: float(v) for s, v in zip(SPLITS, totals)},
                "terms": {t: [float(x) for x in np.asarray(v)] for t, v in terms.items()},
                "mae_kcal": {s: {k: stats[s][k]["mae"] for k in stats[s]} for s in SPLITS},
                "grad_norm": float(grad_norm),
                "not_converged": sorted(n for n, ok in c.items() if not ok),
                "restarted_scf": restarted,
                "wall_s": wall0 + time.perf_counter() - t_start,
            }
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            last_aux = (params, e, c, guesses)
            if progress is not None and step > start:
                progress.update(1)
            if progress is not None:
                progress.set_postfix(loss=f"{totals[0]:.3g}", val=f"{totals[1]:.3g}",
                                     refresh=False)
            stop = step == steps or (config.training.patience and meta["since_best"] >= config.training.patience)
            if stop:
                break
            state = (new_params, new_opt_state, new_guesses, step + 1)
            step += 1
            if step % config.training.checkpoint_every == 0:
                checkpoint()
            if callback is not None:
                callback(step, record)
    except KeyboardInterrupt:
        checkpoint()
        if progress is not None:
            progress.close()
        print(f"interrupted: checkpoint at step {state[3]} in {out}; run the same config again to resume")
        raise
    if progress is not None:
        progress.close()
    checkpoint()
    final_functional = eqx.combine(state[0], static)
    steps_done = state[3]
    best_functional = eqx.combine(best_params, static)
    done = {"best_step": meta["best_step"], "best_value": meta["best_value"], "steps": steps_done}
    _save_functional(os.path.join(out, "best.eqx"), config, best_functional, done)
    _save_functional(os.path.join(out, "final.eqx"), config, final_functional, done)

    results = None
    if evaluate:
        if meta["best_step"] == steps_done:
            best_energies, best_converged = last_aux[1], last_aux[2]
        else:
            args = (best_params, optimizer.init(best_params), last_aux[3], static, prepared.data, optimizer, loss_key,
                    config.training.max_scf_steps)
            outcome, failure = _guarded_step(*args)
            if outcome is None:
                outcome, failure = _guarded_step(*args[:2], _initial_guesses(prepared.data), *args[3:])
            if outcome is None:
                raise TrainingError(f"evaluating the best parameters failed ({failure}); they are in {out}/best.eqx")
            aux = outcome[3]
            best_energies, best_converged = _energies_by_name(prepared, aux[2], aux[3])
        from .evaluation import held_out_report

        results = held_out_report(config, prepared, best_energies, best_converged, initial_energies, out)
    if config.training.plots:
        from .evaluation import plot_learning_curve

        plot_learning_curve(metrics_path, os.path.join(out, "learning_curve.png"))
    return TrainResult(best_functional, final_functional, meta["best_step"], steps_done, out, results)
