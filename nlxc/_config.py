"""Training configuration: typed sections read from TOML or YAML, validated with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import types
import typing
from collections.abc import Mapping

from ._errors import InputError


class ConfigError(InputError):
    """A training configuration with an unknown key or a bad value (one line, names the key)."""


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config {where}: {message}")


def _coerce(value, annotation, where: str):
    """`value` as the type `annotation` (bool, int, float, str, tuple[...], dict), or ConfigError."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return None if value is None else _coerce(value, annotation, where)
    if annotation is bool:
        _check(isinstance(value, bool), where, f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), where, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), where,
               f"expected a number, got {value!r}")
        _check(math.isfinite(value), where, f"expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        _check(isinstance(value, str), where, f"expected a string, got {value!r}")
        return value
    if origin is tuple:
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        _check(isinstance(value, (list, tuple)), where, f"expected a list, got {value!r}")
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if annotation is dict or origin is dict:
        _check(isinstance(value, Mapping), where, f"expected a table of key = value, got {value!r}")
        return types.MappingProxyType(dict(value))
    raise TypeError(f"unsupported config annotation {annotation!r}")  # pragma: no cover


def _check_known(key, known, message: str, show) -> None:
    """ConfigError `message` plus the closest known key (shown with `show`) if `key` is unknown."""
    if key in known:
        return
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {show(close[0])}?" if close else f"; known: {', '.join(map(show, known))}"
    raise ConfigError(message + hint)


class _Section:
    """Base of the config sections: frozen dataclasses built from a mapping with strict keys."""

    _name: typing.ClassVar[str] = ""

    @classmethod
    def from_mapping(cls, mapping, *, written: bool = False) -> _Section:
        where = f"[{cls._name}]"
        _check(isinstance(mapping, Mapping), where, f"expected a table, got {mapping!r}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in mapping.items():
            _check_known(key, fields, f"config {where}: unknown key {key!r}", repr)
            kwargs[key] = _coerce(value, hints[key], f"{where} {key}")
        return cls(**kwargs)

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, Mapping) else v
        return out


@dataclasses.dataclass(frozen=True)
class RunConfig(_Section):
    """`[run]`: `name`; `output_dir` (default `runs/<name>`, relative to the working directory);
    `seed`, the seed of the model's initialisation."""

    _name = "run"
    name: str = "run"
    output_dir: str = ""
    seed: int = 0

    def __post_init__(self):
        _check(bool(self.name.strip()), "[run] name", "must not be empty")
        if not self.output_dir:
            object.__setattr__(self, "output_dir", os.path.join("runs", self.name))


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """`[data]`: which molecules, with which labels, in which split.

    - `dataset`: `"default"` (the bundled [`nlxc.data.default_dataset`][]) or the path of a
      [`nlxc.data.ReferenceDataset`][] (HDF5). Its basis and grid level are used for the Systems.
    - `target`: the method whose labels are learned (e.g. `"ccsd(t)"`, `"b3lyp"`).
    - `molecules`: restrict to these names (default: every molecule of the dataset).
    - `train`, `validation`, `test`: explicit splits of the molecules (names). Molecules of
      none of them (and not `shared`) are split at random by `split` (fractions) with
      `split_seed`.
    - `shared`: species used by every split (default: the free atoms, which atomization energies
      of every split need); they count as training energies.
    - `atomization_reference`: `"target"` (default): atomization energies Σ_a E_a − E_mol of the
      target method's total energies; `"experiment"`: the experimental G2 atomization energies of
      [`nlxc.data.g2`][] (molecules named as in G2).
    - `max_buckets`: padded shapes per shell family (each one compiled once).
    - `split_shells`: bucket closed- and open-shell molecules separately (default), so closed
      shells keep the cheaper restricted SCF; `false` puts them in shared buckets, solved
      unrestricted, which halves the programs to compile for a dataset with atoms.
    - `max_block_groups`: at most this many groups of screened AO blocks per bucket
      ([`nlxc.batch.merge_block_groups`][]; default: all of the covering layout); `1` compiles
      one code path per grid evaluation (fastest to compile for small molecules).
    """

    _name = "data"
    dataset: str = "default"
    target: str = "ccsd(t)"
    molecules: tuple[str, ...] = ()
    train: tuple[str, ...] = ()
    validation: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    shared: tuple[str, ...] | None = None
    split: tuple[float, ...] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    atomization_reference: str = "target"
    max_buckets: int = 1
    split_shells: bool = True
    max_block_groups: int | None = None

    @classmethod
    def from_mapping(cls, mapping, *, written: bool = False) -> DataConfig:
        # An explicit empty split is an error in a user's config; in one written by nlxc (a
        # checkpoint's sidecar) an empty list is how a split that was not given is recorded.
        if isinstance(mapping, Mapping) and not written:
            for split in ("train", "validation", "test"):
                if split in mapping and isinstance(mapping[split], (list, tuple)) and not mapping[split]:
                    raise ConfigError(f"config [data] {split}: the list is empty; name its molecules, or leave "
                                      f"the key out to split the remaining molecules at random by `split` "
                                      f"(a zero fraction there for no {split} molecules)")
        return super().from_mapping(mapping, written=written)

    def __post_init__(self):
        for split in ("train", "validation", "test"):
            listed = getattr(self, split)
            twice = sorted({n for n in listed if listed.count(n) > 1})
            _check(not twice, f"[data] {split}", f"{', '.join(map(repr, twice))} listed twice in {split}")
        _check(len(self.split) == 3 and all(f >= 0 for f in self.split) and sum(self.split) > 0,
               "[data] split", f"expected three non-negative fractions (train, validation, test), got {list(self.split)}")
        _check(self.atomization_reference in ("target", "experiment"), "[data] atomization_reference",
               f"use 'target' or 'experiment', got {self.atomization_reference!r}")
        _check(self.max_buckets >= 1, "[data] max_buckets", f"must be at least 1, got {self.max_buckets}")
        _check(self.max_block_groups is None or self.max_block_groups >= 1, "[data] max_block_groups",
               f"must be at least 1, got {self.max_block_groups}")
        named = self.train + self.validation + self.test
        twice = sorted({n for n in named if named.count(n) > 1})
        _check(not twice, "[data]", f"molecules in more than one split: {', '.join(twice)}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """`[model]`: the functional, `baseline + correction`.

    - `baseline`: a functional name as PySCF spells it (`"pbe"`, `"b3lyp"`, …; see
      [`nlxc.get_functional`][]) or `"none"`.
    - `correction`: a model class of [`nlxc.models`][] (e.g. `"AtomCentredCorrection"`),
      `"ConstrainedMetaGGA"` (the constrained meta-GGA MLP `SlaterExchange() * MLP +
      PW92Correlation.modified() * MLP`, options `width`, `depth`, `final_scale`) or `"none"`.
    - `options`: keyword arguments of the correction's constructor (its `key` comes from
      `[run] seed`).
    - `train_baseline`: also train the baseline's float parameters (default: only the
      correction's).
    """

    _name = "model"
    baseline: str = "pbe"
    correction: str = "AtomCentredCorrection"
    options: dict = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    train_baseline: bool = False

    def __post_init__(self):
        _check(not (self.baseline.lower() == "none" and self.correction.lower() == "none"), "[model]",
               "baseline and correction are both 'none': there is no functional")

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


LOSS_TERMS = ("energy", "atomization", "density", "non_self_consistent", "trajectory", "derivative", "excitation")
PENALTIES = ("correlation_sign", "lieb_oxford", "spin_scaling", "uniform_gas")
"""The constraint penalties of `[loss] penalties` (the `*_penalty` functions of `nlxc.xc`)."""


@dataclasses.dataclass(frozen=True)
class LossConfig(_Section):
    """`[loss]`: weights of the terms of the training loss (see [`nlxc.losses`][]) and their options.

    Terms (a weight ≥ 0 each; 0 leaves the term out):

    - `energy`: total energies through the SCF ([`energy_loss`][nlxc.losses.energy_loss]; the
      Kohn–Sham-regularised energy loss).
    - `atomization`: atomization energies Σ_a E_a − E_mol of the target method through the SCF
      ([`reaction_loss`][nlxc.losses.reaction_loss]).
    - `density`: ∫(ρ − ρ_ref)² ([`density_loss`][nlxc.losses.density_loss], `density_metric`
      `"l2"` or `"coulomb"`); needs density matrices in the dataset.
    - `non_self_consistent`: energies at the fixed reference densities
      ([`non_self_consistent_loss`][nlxc.losses.non_self_consistent_loss]).
    - `trajectory`: the Kohn–Sham regulariser's trajectory loss
      ([`trajectory_loss`][nlxc.losses.trajectory_loss]): the energy error after each of
      `trajectory_steps` unrolled SCF iterations from the Systems' initial guess, weighted
      `trajectory_discount`^(K−k) and zero for the first `trajectory_skip`, plus
      `trajectory_density` × the final ∫(ρ − ρ_ref)².
    - `derivative`: the derivative-informed loss ([`derivative_loss`][nlxc.losses.derivative_loss]) at
      the reference densities: `gradient_weight` × the orbital-gradient error +
      `hessian_weight` × the orbital-Hessian error along `derivative_directions` random
      directions per molecule (drawn once, from `[run] seed`), with labels of nlxc's
      `derivative_reference` functional (default: the `[data] target`, which must then be a
      functional nlxc has, e.g. `"b3lyp"`); needs density matrices in the dataset.
    - `excitation`: the `excitation_states` lowest excitation energies at the SCF solution
      ([`excitation_energy_loss`][nlxc.response.excitation_energy_loss]; Tamm–Dancoff if
      `excitation_tda`, else full Casida), against PySCF's TDDFT of `excitation_reference`
      (default: the `[data] target`) at the dataset's density. Dense matrices: small molecules.
    - `penalties`: a table `{name = weight}` of exact-constraint penalties of the functional at
      the training molecules' SCF densities: `correlation_sign`, `lieb_oxford`, `spin_scaling`
      (the `nlxc.xc` `*_penalty` functions, averaged over the molecules), and
      `uniform_gas` (semilocal functionals: the uniform-gas limit at r_s from 0.1 to 10 Bohr,
      ζ = 0 and 1).

    `kind`: `"mse"`, `"mae"` or `"huber"` for the energy terms (`energy`, `atomization`,
    `non_self_consistent`; `"mse"` or `"mae"` for `excitation`). Each term is a weighted mean
    over the molecules (reactions) of the split; the loss is Σ weight · term, in Hartree² for
    `"mse"`. The least-squares optimisers (`[optimizer] name = "levenberg-marquardt"`,
    `"gauss-newton"`) need `kind = "mse"`.
    """

    _name = "loss"
    energy: float = 0.0
    atomization: float = 1.0
    density: float = 0.0
    non_self_consistent: float = 0.0
    trajectory: float = 0.0
    derivative: float = 0.0
    excitation: float = 0.0
    penalties: dict = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))
    kind: str = "mse"
    density_metric: str = "l2"
    trajectory_steps: int = 20
    trajectory_discount: float = 0.9
    trajectory_skip: int = 0
    trajectory_density: float = 0.0
    gradient_weight: float = 1.0
    hessian_weight: float = 1.0
    derivative_directions: int = 2
    derivative_reference: str = ""
    excitation_states: int = 3
    excitation_tda: bool = True
    excitation_reference: str = ""

    def __post_init__(self):
        for term in LOSS_TERMS:
            _check(getattr(self, term) >= 0, f"[loss] {term}", f"weights must be non-negative, got {getattr(self, term)}")
        for name, weight in self.penalties.items():
            _check_known(name, PENALTIES, f"config [loss] penalties: unknown penalty {name!r}", repr)
            _check(isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                   and weight >= 0, f"[loss] penalties {name}", f"expected a non-negative number, got {weight!r}")
        object.__setattr__(self, "penalties", types.MappingProxyType({k: float(v) for k, v in self.penalties.items()}))
        _check(any(getattr(self, t) > 0 for t in LOSS_TERMS), "[loss]",
               f"every weight is zero; give one of {', '.join(LOSS_TERMS)} a positive weight")
        _check(self.kind in ("mse", "mae", "huber"), "[loss] kind", f"use 'mse', 'mae' or 'huber', got {self.kind!r}")
        _check(self.density_metric in ("l2", "coulomb"), "[loss] density_metric",
               f"use 'l2' or 'coulomb', got {self.density_metric!r}")
        _check(self.trajectory_steps >= 1, "[loss] trajectory_steps", f"must be at least 1, got {self.trajectory_steps}")
        _check(0 < self.trajectory_discount <= 1, "[loss] trajectory_discount",
               f"must be in (0, 1], got {self.trajectory_discount}")
        _check(0 <= self.trajectory_skip < self.trajectory_steps, "[loss] trajectory_skip",
               f"must be in [0, trajectory_steps = {self.trajectory_steps}), got {self.trajectory_skip}")
        _check(self.trajectory_density >= 0, "[loss] trajectory_density",
               f"must be non-negative, got {self.trajectory_density}")
        for key in ("gradient_weight", "hessian_weight"):
            _check(getattr(self, key) >= 0, f"[loss] {key}", f"must be non-negative, got {getattr(self, key)}")
        if self.derivative:
            _check(self.gradient_weight > 0 or self.hessian_weight > 0, "[loss] derivative",
                   "gradient_weight and hessian_weight are both zero")
        _check(self.derivative_directions >= 1, "[loss] derivative_directions",
               f"must be at least 1, got {self.derivative_directions}")
        _check(self.excitation_states >= 1, "[loss] excitation_states",
               f"must be at least 1, got {self.excitation_states}")
        if self.excitation:
            _check(self.kind in ("mse", "mae"), "[loss] kind",
                   f"the excitation term takes 'mse' or 'mae', got {self.kind!r}")

    def weights(self) -> dict[str, float]:
        return {t: getattr(self, t) for t in LOSS_TERMS if getattr(self, t) > 0}

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))


OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "lion", "adabelief")
LEAST_SQUARES = ("levenberg-marquardt", "gauss-newton")
"""Optimisers of `[optimizer] name` that minimise the loss as a sum of squared residuals (optimistix)."""
SCHEDULES = ("constant", "cosine", "exponential", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """`[optimizer]`: an optax optimiser and learning-rate schedule, or a least-squares solver.

    - `name`: one of `adam`, `adamw`, `sgd`, `rmsprop`, `lion`, `adabelief` (optax), or
      `levenberg-marquardt` / `gauss-newton` (`optimistix.LevenbergMarquardt` /
      `optimistix.GaussNewton` on the vector of residuals whose sum of squares is the
      training loss; each step is one evaluation of the residuals and their Jacobian, by
      reverse mode through the SCF; a step the trust region rejects keeps the parameters).
      The run stops early when the solver's Cauchy termination (`rtol`, `atol`) is met.
      `learning_rate`, `schedule`, `clip_norm` and `weight_decay` are for the optax optimisers.
    - `learning_rate`: peak learning rate.
    - `schedule`: `constant`, `cosine` (decays to `final_fraction` · peak over the run),
      `exponential` (the same end point, geometric), `warmup_cosine` (linear warm-up over
      `warmup_steps`, then cosine).
    - `clip_norm`: clip the global gradient norm to this (0: no clipping).
    - `weight_decay`: for `adamw`.
    - `rtol`, `atol`: the termination tolerances of the least-squares solvers (parameters and
      residuals, optimistix's Cauchy termination).
    """

    @property
    def least_squares(self) -> bool:
        """Whether `name` is a least-squares solver (optimistix) rather than an optax optimiser."""
        return self.name in LEAST_SQUARES

    _name = "optimizer"
    name: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    final_fraction: float = 0.1
    clip_norm: float = 0.0
    weight_decay: float = 1e-4
    rtol: float = 1e-8
    atol: float = 1e-8

    def __post_init__(self):
        _check(self.name in OPTIMIZERS + LEAST_SQUARES, "[optimizer] name",
               f"unknown optimiser {self.name!r}; use one of {', '.join(OPTIMIZERS + LEAST_SQUARES)}")
        _check(self.rtol > 0, "[optimizer] rtol", f"must be positive, got {self.rtol}")
        _check(self.atol > 0, "[optimizer] atol", f"must be positive, got {self.atol}")
        _check(self.schedule in SCHEDULES, "[optimizer] schedule",
               f"unknown schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        _check(self.learning_rate > 0, "[optimizer] learning_rate", f"must be positive, got {self.learning_rate}")
        _check(self.warmup_steps >= 0, "[optimizer] warmup_steps", f"must be non-negative, got {self.warmup_steps}")
        _check(0 < self.final_fraction <= 1, "[optimizer] final_fraction", f"must be in (0, 1], got {self.final_fraction}")
        _check(self.clip_norm >= 0, "[optimizer] clip_norm", f"must be non-negative, got {self.clip_norm}")
        _check(self.weight_decay >= 0, "[optimizer] weight_decay", f"must be non-negative, got {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Section):
    """`[training]`: the loop.

    - `steps`: optimisation steps (each one full-batch: every training molecule, one SCF each).
    - `patience`: stop when the validation loss has not improved for this many steps (0: never).
    - `checkpoint_every`: write the resumable checkpoint every this many steps (and at the end,
      and on interruption).
    - `max_scf_steps`: SCF iterations allowed per solve.
    - `max_failed_steps`: stop the run (with [`TrainingError`][nlxc.train.TrainingError]) after
      this many consecutive failed steps. A step fails when its training loss, gradient or
      update is not finite, or the SCF of a training molecule did not converge; it keeps the
      parameters and optimiser state it started from and starts the next step from the Systems'
      initial guesses. The default, 2, allows that one retry: a third attempt would repeat the
      second exactly (the steps are deterministic).
    - `progress`: show a progress bar; `plots`: write the PNG plots at the end.
    """

    _name = "training"
    steps: int = 100
    patience: int = 0
    checkpoint_every: int = 10
    max_scf_steps: int = 100
    max_failed_steps: int = 2
    progress: bool = True
    plots: bool = True

    def __post_init__(self):
        _check(self.steps >= 1, "[training] steps", f"must be at least 1, got {self.steps}")
        _check(self.patience >= 0, "[training] patience", f"must be non-negative, got {self.patience}")
        _check(self.checkpoint_every >= 1, "[training] checkpoint_every", f"must be at least 1, got {self.checkpoint_every}")
        _check(self.max_scf_steps >= 1, "[training] max_scf_steps", f"must be at least 1, got {self.max_scf_steps}")
        _check(self.max_failed_steps >= 1, "[training] max_failed_steps",
               f"must be at least 1, got {self.max_failed_steps}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig(_Section):
    """`[evaluation]`: `baselines`, PySCF functionals computed beside the trained one on the
    held-out molecules (same basis, grid and density fitting)."""

    _name = "evaluation"
    baselines: tuple[str, ...] = ("lda", "pbe", "b3lyp")


_SECTIONS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "loss": LossConfig,
             "optimizer": OptimizerConfig, "training": TrainingConfig, "evaluation": EvaluationConfig}

# Keys that may change between a run and its resumption (they do not change the trajectory).
# `output_dir` is where the run is, not what it is: a run directory can be named by a relative or
# an absolute path, and moved or copied, and still resumes.
RESUMABLE_CHANGES = {"run": ("output_dir",),
                     "training": ("steps", "patience", "checkpoint_every", "max_failed_steps", "progress", "plots"),
                     "evaluation": ("baselines",)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A complete training configuration: one field per section (see their docstrings).

    Build it with [`load_config`][nlxc.train.load_config] (TOML or YAML file) or
    [`TrainConfig.from_dict`][nlxc.train.TrainConfig.from_dict]; every section and key is
    optional except that the result must describe a functional and a loss.
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)

    @classmethod
    def from_dict(cls, mapping, *, written: bool = False) -> TrainConfig:
        """From nested mappings `{section: {key: value}}`.

        `written=True` reads a config that nlxc wrote (`to_dict` in a checkpoint's sidecar or
        `config.json`), where an empty `[data]` split list means that the split was not given.

        **Raises:** [`ConfigError`][nlxc.train.ConfigError] (an [`nlxc.InputError`][]) naming
        the section and key of an unknown key, a value of the wrong type or out of range, or an
        explicitly empty `[data] train`, `validation` or `test` list.
        """
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"config: expected a table of sections, got {type(mapping).__name__}")
        sections = {}
        for name, value in mapping.items():
            _check_known(name, _SECTIONS, f"config: unknown section [{name}]", lambda k: f"[{k}]")
            sections[name] = _SECTIONS[name].from_mapping(value, written=written)
        return cls(**sections)

    def __post_init__(self):
        if self.optimizer.least_squares:
            _check(self.loss.kind == "mse", "[loss] kind",
                   f"[optimizer] name = {self.optimizer.name!r} minimises a sum of squared residuals: use "
                   f"kind = 'mse', got {self.loss.kind!r}")

    def to_dict(self) -> dict:
        """Nested plain dicts (JSON-serialisable), the inverse of `from_dict`."""
        return {name: getattr(self, name).to_dict() for name in _SECTIONS}

    def differences(self, other: TrainConfig, *, ignore=RESUMABLE_CHANGES) -> list[str]:
        """`[section] key` of every setting that differs from `other`, except `ignore`d ones."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for section in _SECTIONS:
            for key in a[section]:
                if key in ignore.get(section, ()):
                    continue
                if json.dumps(a[section][key], sort_keys=True) != json.dumps(b[section][key], sort_keys=True):
                    out.append(f"[{section}] {key}")
        return out


# YAML 1.2's float syntax. PyYAML implements YAML 1.1, whose floats need a dot: it reads
# `learning_rate: 2e-3` as the *string* "2e-3". With this resolver such numbers are floats, as in
# YAML 1.2 and TOML; everything else (quoted strings, integers, booleans) is read as before, and
# a string where a number is expected is still an error.
_YAML12_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.VERBOSE)


def _yaml_loader(yaml):
    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
    return Loader


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a training configuration from a TOML (`.toml`) or YAML (`.yaml`, `.yml`) file.

    **Raises:** [`ConfigError`][nlxc.train.ConfigError] for a missing file, a syntax error,
    an unknown section or key, or a bad value (one line, naming the file and the key).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            import tomllib

            with open(path, "rb") as f:
                mapping = tomllib.load(f)
        elif ext in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise ConfigError("reading YAML configs needs PyYAML: pip install pyyaml") from None
            with open(path, encoding="utf-8") as f:
                mapping = yaml.load(f, Loader=_yaml_loader(yaml)) or {}
        else:
            raise ConfigError(f"config file {path!r}: use a .toml, .yaml or .yml file")
    except ConfigError:
        raise
    except Exception as err:  # syntax errors of either parser
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"config file {path!r} could not be parsed: {first}") from None
    try:
        return TrainConfig.from_dict(mapping)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
