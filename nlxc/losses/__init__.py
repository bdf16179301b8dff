"""Losses for training exchange–correlation functionals: pure functions of SCF results (or of the
functional at fixed reference densities) and reference labels.

Every loss here works on a padded, stacked [`nlxc.batch.Batch`][] (it is vmapped over the
molecules of the batch), and ignores the batch's filler entries (`batch.mask == False`) exactly:
they contribute zero to the value and zero to the gradient, even if their targets are NaN (the
residuals are masked before they are squared, so no NaN reaches the cotangents). Options are
explicit keyword arguments whose allowed values are declared (`KINDS`, `Literal` types) and
checked in Python before any array work, with a one-line [`nlxc.InputError`][].

**Two kinds of losses.**

- *Self-consistent* losses are functions `(result, batch, targets) -> scalar` of the batch's
  [`SCFResult`][nlxc.scf.SCFResult]: the caller solves the SCF (e.g. `result =
  nlxc.batch.solve_batch(functional, batch.system)`) and differentiates solve and loss together
  (`eqx.filter_grad` with respect to the functional's float leaves); one result can feed
  several losses.
- *Fixed-density* losses are functions `(functional, batch, targets) -> scalar`: they evaluate
  the functional at the reference densities, with no SCF.

**Reference data.** A loss reads its labels from a [`Targets`][nlxc.losses.Targets] (one row per
entry of the batch, padded to the batch's shapes) or, for reaction and atomization energies, a
[`Reactions`][nlxc.losses.Reactions] (a stoichiometry matrix over all molecules of a dataset).
Both are `equinox.Module`s of arrays, so they go through `jax.jit`/`jax.vmap`/sharding like the
batch itself. They are built from the labels of [`nlxc.data`][]:
[`Targets.from_dataset`][nlxc.losses.Targets.from_dataset] reads
[`ReferenceEntry`][nlxc.data.ReferenceEntry]s (energy, density matrix, Fock matrix) of a
[`ReferenceDataset`][nlxc.data.ReferenceDataset], and
[`Reactions.from_benchmark_set`][nlxc.losses.Reactions.from_benchmark_set] turns a
[`BenchmarkSet`][nlxc.data.BenchmarkSet] (G2, W4-11, GMTKN55 …) into a stoichiometry matrix.

**The losses** (see `docs/losses.md` for formulas, costs and examples):

| loss | arguments | gradient through the SCF | reads |
|---|---|---|---|
| [`energy_loss`][nlxc.losses.energy_loss] | `result, batch, targets` | implicit adjoint | `energy` |
| [`reaction_loss`][nlxc.losses.reaction_loss] | `results, batches, reactions` | implicit adjoint | `Reactions` |
| [`density_loss`][nlxc.losses.density_loss] | `result, batch, targets` | implicit adjoint | `density_matrix` |
| [`trajectory_loss`][nlxc.losses.trajectory_loss] | `result, batch, targets` (unrolled result) | unrolled (every iteration) | `energy` (+ `density_matrix`) |
| [`non_self_consistent_loss`][nlxc.losses.non_self_consistent_loss] | `functional, batch, targets` | no SCF (fixed reference density) | `energy`, `density_matrix` |
| [`derivative_loss`][nlxc.losses.derivative_loss] | `functional, batch, targets` | no SCF (fixed reference density) | `density_matrix`, `fock_matrix`, `rotations`, `hessian_products` |

The penalties for exact constraints live with the functionals, in `nlxc.xc`
([`uniform_gas_penalty`][nlxc.xc.uniform_gas_penalty],
[`correlation_sign_penalty`][nlxc.xc.correlation_sign_penalty],
[`lieb_oxford_penalty`][nlxc.xc.lieb_oxford_penalty],
[`spin_scaling_penalty`][nlxc.xc.spin_scaling_penalty],
[`size_consistency_penalty`][nlxc.xc.size_consistency_penalty]); a penalty is summed over a
batch by [`penalty_over_batch`][nlxc.losses.penalty_over_batch].

All quantities are in atomic units: energies in Hartree, so squared-error losses are in Hartree².
"""

from ._derivatives import orbital_hessian_product, ov_gradient, random_rotations
from ._fixed_density import derivative_loss, non_self_consistent_loss, penalty_over_batch
from ._reductions import DEFAULT_HUBER_DELTA, KINDS, REDUCTIONS, Kind, Reduction, errors, weighted_mean
from ._scf_losses import (
    METRICS,
    NEGATIVE_WEIGHTS,
    Metric,
    NegativeWeights,
    density_difference,
    density_loss,
    energy_loss,
    reaction_loss,
    trajectory_loss,
    trajectory_weights,
)
from ._targets import Reactions, Targets

__all__ = [
    "DEFAULT_HUBER_DELTA",
    "KINDS",
    "METRICS",
    "NEGATIVE_WEIGHTS",
    "REDUCTIONS",
    "Kind",
    "Metric",
    "NegativeWeights",
    "Reactions",
    "Reduction",
    "Targets",
    "density_difference",
    "density_loss",
    "derivative_loss",
    "energy_loss",
    "errors",
    "non_self_consistent_loss",
    "orbital_hessian_product",
    "ov_gradient",
    "penalty_over_batch",
    "random_rotations",
    "reaction_loss",
    "trajectory_loss",
    "trajectory_weights",
    "weighted_mean",
]
