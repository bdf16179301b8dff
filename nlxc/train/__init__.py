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

from .._config import (
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
from ._build import build_functional, build_optimizer
from ._checkpoint import TrainState, load_checkpoint
from ._common import SPLITS, TrainingError, TrainingInterrupted
from ._report import plot_learning_curve
from ._trainer import TrainResult, train

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
    "plot_learning_curve",
    "train",
]
