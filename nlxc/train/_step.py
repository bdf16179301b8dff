"""The compiled training step: SCFs, losses, gradient and update, failures as values."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx

from .. import losses as L
from .._config import (
    LOSS_TERMS,
    LossConfig,
)
from ..batch import Batch
from ..response import ExcitationTargets, per_molecule_excitation_errors
from ..scf import (
    FailAsValue,
    ImplicitAdjoint,
    SCFImplicitAdjoint,
    UnrolledAdjoint,
    solve,
)
from ..xc import (
    correlation_sign_penalty,
    lieb_oxford_penalty,
    spin_scaling_penalty,
    uniform_gas_penalty,
)
from ._data import _StepData

# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


class LossSpec(eqx.Module):
    """The training loss of a run (`[loss]` of the config), static in the compiled step.

    - `weights`: `(term, weight)` pairs of the loss terms in use (`LOSS_TERMS`).
    - `kind`: the error measure of the energy terms (`nlxc.losses.KINDS`).
    - `metric`: the density metric of the `density` term (`nlxc.losses.METRICS`).
    - `penalties`: `(name, weight)` pairs of the constraint penalties (`PENALTIES`).
    - `options`: `(key, value)` pairs of the terms' options (trajectory, derivative, excitation).
    """

    weights: tuple[tuple[str, float], ...] = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    metric: str = eqx.field(static=True)
    penalties: tuple[tuple[str, float], ...] = eqx.field(static=True, default=())
    options: tuple[tuple[str, Any], ...] = eqx.field(static=True, default=())

    @classmethod
    def from_config(cls, config: LossConfig) -> LossSpec:
        options = {k: getattr(config, k) for k in ("trajectory_steps", "trajectory_discount", "trajectory_skip",
                                                    "trajectory_density", "gradient_weight", "hessian_weight",
                                                    "excitation_tda")}
        return cls(tuple(sorted(config.weights().items())), config.kind, config.density_metric,
                   tuple(sorted(config.penalties.items())), tuple(sorted(options.items())))

    def term_names(self) -> tuple[str, ...]:
        """The names of the terms in the metrics: the loss terms, then `penalty_<name>`."""
        return tuple(t for t in LOSS_TERMS if t in dict(self.weights)) + tuple(
            f"penalty_{p}" for p, w in self.penalties if w > 0)


# Uniform densities of the `uniform_gas` penalty: r_s from 0.1 to 10 Bohr, ζ = 0 and 1.
_UNIFORM_GAS_RS = np.logspace(-1, 1, 24)


def _uniform_gas_points():
    rs = np.concatenate([_UNIFORM_GAS_RS, _UNIFORM_GAS_RS])
    zeta = np.concatenate([np.zeros_like(_UNIFORM_GAS_RS), np.ones_like(_UNIFORM_GAS_RS)])
    return jnp.asarray(rs), jnp.asarray(zeta)


_PENALTY_FUNCTIONS = {"correlation_sign": correlation_sign_penalty, "lieb_oxford": lieb_oxford_penalty,
                      "spin_scaling": spin_scaling_penalty}


def _per_entry(loss_of_weight, n: int) -> jax.Array:
    """The per-entry values v_k of a loss that is Σ_k m_k w_k v_k for weights w (`reduction="sum"`):
    its gradient with respect to w at w = 1, `(n,)` (zero for filler entries)."""
    return jax.grad(loss_of_weight)(jnp.ones(n))


def _trajectory_results(functional, data: _StepData, steps: int):
    return [eqx.filter_vmap(lambda s: solve(functional, s, max_steps=steps, adjoint=UnrolledAdjoint(),
                                            stability=None))(b.system) for b in data.batches]


def _term_values(functional, data: _StepData, results, loss: LossSpec, *, per_molecule_only: bool = False):
    """Per term: `("molecules", [per batch (batch,) values])` (weighted by the molecule weights of
    each split) or `("reactions", (n_reactions,) values)` or `("global", scalar)`; plus, for the
    `energy` term with `kind = "mse"`, the signed residuals (for the least-squares optimisers)."""
    weights, kind, metric = dict(loss.weights), loss.kind, loss.metric
    options = dict(loss.options)
    values, signed = {}, None
    trajectory = None
    if "trajectory" in weights:
        trajectory = _trajectory_results(functional, data, options["trajectory_steps"])
    for term in LOSS_TERMS:
        if term not in weights or (per_molecule_only and term == "atomization"):
            continue
        if term == "atomization":
            reactions = data.reactions
            values[term] = ("reactions", jax.grad(lambda w, reactions=reactions: L.reaction_loss(
                results, data.batches, dataclasses.replace(reactions, weight=w), kind=kind, reduction="sum"))(
                jnp.ones(reactions.reference.shape[0])))
            continue
        per_batch = []
        for k, (b, t, r) in enumerate(zip(data.batches, data.targets, results)):
            n = b.mask.shape[0]
            if term == "energy":
                v = L.errors(jnp.where(b.mask, r.energy - t.energy, 0.0), kind)
                if kind == "mse":
                    signed = (signed or []) + [jnp.where(b.mask, r.energy - t.energy, 0.0)]
            elif term == "density":
                v = _per_entry(lambda w, b=b, t=t, r=r: L.density_loss(
                    r, b, dataclasses.replace(t, weight=w), metric=metric, reduction="sum"), n)
            elif term == "non_self_consistent":
                v = _per_entry(lambda w, b=b, t=t: L.non_self_consistent_loss(
                    functional, b, dataclasses.replace(t, weight=w), kind=kind, reduction="sum"), n)
            elif term == "trajectory":
                v = _per_entry(lambda w, b=b, t=t, r=trajectory[k]: L.trajectory_loss(
                    r, b, dataclasses.replace(t, weight=w), discount=options["trajectory_discount"],
                    skip=options["trajectory_skip"], density_weight=options["trajectory_density"],
                    reduction="sum"), n)
            elif term == "derivative":
                v = _per_entry(lambda w, b=b, t=t: L.derivative_loss(
                    functional, b, dataclasses.replace(t, weight=w), gradient_weight=options["gradient_weight"],
                    hessian_weight=options["hessian_weight"], reduction="sum"), n)
            else:  # excitation
                v = per_molecule_excitation_errors(functional, b, r, data.excitations[k],
                                                   tda=options["excitation_tda"], kind=kind)
            per_batch.append(jnp.where(b.mask, v, 0.0))
        values[term] = ("molecules", per_batch)
    for name, weight in loss.penalties:
        if weight <= 0:
            continue
        if name == "uniform_gas":
            if per_molecule_only:
                continue
            rs, zeta = _uniform_gas_points()
            values[f"penalty_{name}"] = ("global", uniform_gas_penalty(functional, rs, zeta))
            continue
        penalty = _PENALTY_FUNCTIONS[name]
        values[f"penalty_{name}"] = ("molecules", [
            _per_entry(lambda w, b=b, r=r, penalty=penalty: L.penalty_over_batch(
                penalty, functional, b, jax.lax.stop_gradient(r.density_matrix), weight=w, reduction="sum"),
                b.mask.shape[0]) for b, r in zip(data.batches, results)])
    return values, signed


def _term_weight(loss: LossSpec, term: str) -> float:
    if term.startswith("penalty_"):
        return dict(loss.penalties)[term[len("penalty_"):]]
    return dict(loss.weights)[term]


def _reduce(values, data: _StepData, loss: LossSpec):
    """(3,) losses of the splits and a dict of (3,) per-term values, from the per-entry values of
    `_term_values`: each term is the weighted mean over the molecules (reactions) of each split."""
    terms = {}
    for term, (how, v) in values.items():
        if how == "global":
            terms[term] = jnp.full(3, v)
            continue
        if how == "reactions":
            w = data.reaction_weights  # (3, n_reactions)
            sums, norms = w @ v, jnp.sum(w, axis=1)
        else:
            sums = sum(mw @ x for mw, x in zip(data.molecule_weights, v))
            norms = _molecule_norms(data)
        terms[term] = sums / jnp.where(norms > 0, norms, 1.0)
    total = sum(_term_weight(loss, t) * terms[t] for t in terms)
    return total, terms


def _molecule_norms(data: _StepData) -> jax.Array:
    """(3,) the total weight of the real molecules of each split."""
    return sum(jnp.sum(mw * b.mask, axis=1) for mw, b in zip(data.molecule_weights, data.batches))


def _split_losses(functional, data: _StepData, results, loss: LossSpec):
    """(3,) losses of the splits and a dict of (3,) per-term values."""
    values, _ = _term_values(functional, data, results, loss)
    return _reduce(values, data, loss)


def _safe_sqrt(x):
    """√x for x ≥ 0, with a zero (not infinite) derivative at x = 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


@functools.cache
def _adjoint() -> optx.ImplicitAdjoint:
    """nlxc's default implicit adjoint, its linear solver failing as a value (`FailAsValue`)."""
    return SCFImplicitAdjoint(linear_solver=FailAsValue(ImplicitAdjoint().linear_solver))


def _solve_from(functional, system, guess, max_scf_steps):
    """The vmapped SCF of a batch, started from `guess` (the last converged density matrices).

    Without the stability analysis of open shells (`stability=None`): each step starts from the
    minimum the last step converged to, which a small parameter update moves continuously, and
    under `jax.vmap` the analysis (about 48 Fock builds) would run for the whole open-shell
    batch at every step. Evaluation (`nlxc.evaluation`) keeps `solve`'s default analysis."""
    return eqx.filter_vmap(lambda s, p: solve(functional, s, initial_density_matrix=p, max_steps=max_scf_steps,
                                              adjoint=_adjoint(), stability=None))(system, guess)


def _initial_guesses(data: _StepData) -> list[jax.Array]:
    """Per batch, the density matrices the first step's SCFs start from, `(batch, 2, nao, nao)`:
    the dataset's reference density matrices of the targets where every molecule of the batch
    has one, else the Systems' initial guesses.

    A reference density (of the label method) is a better start than the minao guess, above all for the
    open-shell batch, whose vmapped SCF runs as long as its slowest member (degenerate p shells
    of the free atoms): the quickstart's first step ran in about half the time from them
    (2026-12-07, 2 shared cores), to the same energies. The fixed point does not depend on the
    start (for a molecule with one minimum near it)."""
    return [b.system.initial_density_matrix if t.density_matrix is None else t.density_matrix
            for b, t in zip(data.batches, data.targets)]


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
      first step's starting points (`_initial_guesses`).
    - `ok`, `failure`: whether the update was accepted; the `_*` bits of why not.
    - `losses` `(3,)`, `terms` (per loss term, `(3,)`), `energies`, `converged` (per batch),
      `grad_norm`: at the parameters `evaluated` (the input parameters for optax; the point the
      least-squares solver proposed, `carry.params` or not, for the optimistix solvers).
    - `accepted`: whether the evaluated point became the parameters (always for optax);
      `done`: the least-squares solver's termination criterion is met (never for optax).
    """

    carry: _Carry
    ok: jax.Array
    failure: jax.Array
    losses: jax.Array
    terms: dict
    energies: list
    converged: list
    grad_norm: jax.Array
    evaluated: Any
    accepted: jax.Array
    done: jax.Array


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@eqx.filter_jit
def _step(carry: _Carry, static, data: _StepData, optimizer, loss: LossSpec, max_scf_steps: int) -> _StepOutput:
    """One optimisation step; also returns the energies and losses at the *input* parameters.

    Each SCF starts from the density matrix its molecule converged to in the previous step
    (`carry.guesses`; a molecule whose SCF did not converge restarts from the first step's
    starting point), so
    after the first step a few iterations suffice. The fixed point, hence the loss and its
    implicit gradient, does not depend on the starting point (up to the SCF tolerance).

    A failure is a value: if the training loss, the gradient or its norm (a failed adjoint solve
    makes it overflow, see `nlxc.scf.FailAsValue`), the new parameters or the new optimiser state are not
    finite, or the SCF of a molecule with a training weight did not converge, the step keeps its
    input parameters and optimiser state (`jnp.where`) and the next one starts from the first
    step's starting points (`_initial_guesses`).
    """

    if isinstance(optimizer, optx.AbstractLeastSquaresSolver):
        return _least_squares_step(carry, static, data, optimizer, loss, max_scf_steps)

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
    return _StepOutput(next_carry, ok, failure, total, terms, energies, converged, grad_norm, carry.params,
                       jnp.asarray(True), jnp.asarray(False))


def _linearised(r0, jac, y0):
    """y ↦ r0 + J (y − y0): the residuals and Jacobian evaluated at y0, handed to optimistix."""

    def fn(y, args):
        del args
        dy = jax.tree.map(lambda a, b: a - b, y, y0)
        out = r0
        for j, d in zip(jax.tree.leaves(jac), jax.tree.leaves(dy)):
            out = out + jnp.tensordot(j, d, axes=d.ndim)
        return out, None

    return fn


def _molecule_terms(loss: LossSpec) -> tuple[str, ...]:
    """The terms with one value per molecule, in the order of the residuals."""
    return tuple(t for t in loss.term_names() if t not in ("atomization", "penalty_uniform_gas"))


def _one_molecule(p, static, system, index, mask, targets, excitations, guess, scale, loss: LossSpec,
                  max_scf_steps: int):
    """For one batch entry: the vector [E, r_1, r_2, …] of its energy and its residuals (one per
    per-molecule term, r_t = √(w_t · s) · (signed error or √value), with s its training weight over
    the training total), and the aux (values per term, energy, converged, density matrix)."""
    functional = eqx.combine(p, static)
    batch = Batch(jax.tree.map(lambda x: x[None], system), index[None], mask[None])
    mini = _StepData([batch], [jax.tree.map(lambda x: x[None], targets)], [jnp.ones((3, 1))], None, None,
                     None if excitations is None else [ExcitationTargets(excitations.energies[None],
                                                                         excitations.slots)])
    result = _solve_from(functional, batch.system, guess[None], max_scf_steps)
    values, signed = _term_values(functional, mini, [result], loss, per_molecule_only=True)
    rows, per_term = [result.energy[0]], {}
    for term in _molecule_terms(loss):
        v = values[term][1][0][0]
        per_term[term] = v
        factor = jnp.sqrt(_term_weight(loss, term)) * scale
        if term == "energy" and signed is not None:
            rows.append(factor * signed[0][0])
        else:
            rows.append(factor * _safe_sqrt(v))
    rows = jnp.stack(rows)
    return rows, (rows, per_term, result.energy[0], result.converged[0],
                  jax.lax.stop_gradient(result.density_matrix[0]))


def _least_squares_evaluation(p, static, data: _StepData, guesses, loss: LossSpec, max_scf_steps: int):
    """The training residuals r `(m,)` (Σ r² = the training loss), their Jacobian (a pytree like
    `p` with a leading `(m,)` axis), and the aux `(losses (3,), terms, energies, converged,
    densities)`.

    Every residual but those of reactions and of the uniform-gas penalty belongs to one molecule,
    so the Jacobian is built per molecule (`jax.vmap` of `jax.jacrev` of that molecule's SCF and
    terms): each row costs one adjoint solve of its own molecule, not of the whole batch; the
    atomization residuals are the stoichiometry times the energies' rows."""
    norm = _molecule_norms(data)[0]
    norm = jnp.where(norm > 0, norm, 1.0)
    terms = _molecule_terms(loss)
    residual_rows, jac_rows = [], []
    values = {t: ("molecules", []) for t in terms}
    energies, converged, densities, energy_rows = [], [], [], []
    for k, (b, t, w, g) in enumerate(zip(data.batches, data.targets, data.molecule_weights, guesses)):
        excitations = None if data.excitations is None else data.excitations[k]
        scale = jnp.sqrt(jnp.where(b.mask, w[0], 0.0) / norm)
        jac, (rows, per_term, energy, conv, density) = jax.vmap(
            jax.jacrev(_one_molecule, has_aux=True),
            in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0, None, None))(
            p, static, b.system, b.index, b.mask, t, excitations, g, scale, loss, max_scf_steps)
        residual_rows.append(rows[:, 1:].T.reshape(-1))  # term-major
        jac_rows.append(jax.tree.map(lambda j: jnp.swapaxes(j[:, 1:], 0, 1).reshape((-1,) + j.shape[2:]), jac))
        energy_rows.append(jax.tree.map(lambda j: j[:, 0], jac))
        for term in terms:
            values[term][1].append(jnp.where(b.mask, per_term[term], 0.0))
        energies.append(energy)
        converged.append(conv)
        densities.append(density)
    if "atomization" in dict(loss.weights):
        reactions = data.reactions
        n = reactions.stoichiometry.shape[1]
        e_vec = jnp.zeros(n)
        j_vec = jax.tree.map(lambda x: jnp.zeros((n,) + x.shape, x.dtype), p)
        for b, e, jr in zip(data.batches, energies, energy_rows):
            idx = jnp.where(b.mask, b.index, n)
            e_vec = e_vec.at[idx].add(jnp.where(b.mask, e, 0.0), mode="drop")
            j_vec = jax.tree.map(lambda acc, x, idx=idx, mask=b.mask: acc.at[idx].add(
                jnp.where(jnp.reshape(mask, (-1,) + (1,) * (x.ndim - 1)), x, 0.0), mode="drop"), j_vec, jr)
        error = reactions.stoichiometry @ e_vec - reactions.reference
        values["atomization"] = ("reactions", L.errors(error, loss.kind))
        rw = data.reaction_weights[0]
        factor = jnp.sqrt(_term_weight(loss, "atomization") * rw / jnp.where(jnp.sum(rw) > 0, jnp.sum(rw), 1.0))
        residual_rows.append(factor * error)
        jac_rows.append(jax.tree.map(lambda x: factor.reshape((-1,) + (1,) * (x.ndim - 1))
                                     * jnp.tensordot(reactions.stoichiometry, x, axes=1), j_vec))
    if "penalty_uniform_gas" in loss.term_names():
        rs, zeta = _uniform_gas_points()

        def uniform_gas(q):
            v = uniform_gas_penalty(eqx.combine(q, static), rs, zeta)
            return jnp.sqrt(_term_weight(loss, "penalty_uniform_gas")) * _safe_sqrt(v)[None], v

        jac, v = jax.jacrev(uniform_gas, has_aux=True)(p)
        values["penalty_uniform_gas"] = ("global", v)
        residual_rows.append(jnp.sqrt(_term_weight(loss, "penalty_uniform_gas")) * _safe_sqrt(v)[None])
        jac_rows.append(jac)
    ordered = {t: values[t] for t in loss.term_names()}
    total, term_values = _reduce(ordered, data, loss)
    residuals = jnp.concatenate(residual_rows)
    jac = jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *jac_rows)
    return residuals, jac, (total, term_values, energies, converged, densities)


def init_optimizer_state(optimizer, params, static, data: _StepData, loss: LossSpec, max_scf_steps: int):
    """The initial optimiser state: optax's `init`, or the optimistix least-squares solver's state
    for residuals of the shape this run's loss gives (nothing is solved)."""
    if not isinstance(optimizer, optx.AbstractLeastSquaresSolver):
        return optimizer.init(params)
    guesses = _initial_guesses(data)
    r_struct, _, _ = eqx.filter_eval_shape(_least_squares_evaluation, params, static, data, guesses, loss,
                                           max_scf_steps)
    zeros = jnp.zeros(r_struct.shape, r_struct.dtype)
    jac = jax.tree.map(lambda x: jnp.zeros(r_struct.shape + x.shape, x.dtype), params)
    fn = _linearised(zeros, jac, params)
    return optimizer.init(fn, params, None, _LS_OPTIONS, jax.eval_shape(lambda: zeros), None, frozenset())


_LS_OPTIONS = {"jac": "bwd"}


def _least_squares_step(carry: _Carry, static, data: _StepData, solver, loss: LossSpec,
                        max_scf_steps: int) -> _StepOutput:
    """One evaluation of the residuals and their Jacobian (reverse mode through the SCF) at the point
    the solver proposes (`opt_state.y_eval`), then one `solver.step` (accept or reject, next proposal).

    A failed evaluation (non-finite residuals or Jacobian, or a training molecule's SCF not
    converged) is given to the solver as non-finite residuals, which its trust region rejects
    (a smaller step next); at the first step, which optimistix always accepts, the input state is
    kept instead, as is the whole input state whenever the solver's new state is not finite."""
    state = carry.opt_state
    y_eval = state.y_eval
    r0, jac, aux = _least_squares_evaluation(y_eval, static, data, carry.guesses, loss, max_scf_steps)
    total, terms, energies, converged, densities = aux
    scf_ok = jnp.all(jnp.stack([jnp.all(c | ~(b.mask & (w[0] > 0)))
                                for b, w, c in zip(data.batches, data.molecule_weights, converged)]))
    gradient = jax.tree.map(lambda j: 2.0 * jnp.tensordot(r0, j, axes=1), jac)
    grad_norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(gradient)))
    failure = (jnp.where(jnp.isfinite(total[0]) & jnp.all(jnp.isfinite(r0)), 0, _LOSS_NOT_FINITE)
               | jnp.where(_all_finite(jac) & jnp.isfinite(grad_norm), 0, _GRADIENT_NOT_FINITE)
               | jnp.where(scf_ok, 0, _SCF_FAILED))
    failed = failure != 0
    r_used = jnp.where(failed, jnp.nan, r0)
    j_used = jax.tree.map(lambda j: jnp.where(failed, 0.0, j), jac)
    fn = _linearised(r_used, j_used, y_eval)
    params, new_state, _ = solver.step(fn, carry.params, None, _LS_OPTIONS, state, frozenset())
    keep_all = (failed & state.first_step) | ~(_all_finite(params) & _all_finite(new_state))
    failure = failure | jnp.where(keep_all & ~failed, _UPDATE_NOT_FINITE, 0)
    ok = failure == 0
    accepted = ok & (new_state.num_accepted_steps > state.num_accepted_steps)

    def keep(new, old):
        return jax.tree.map(lambda a, b: jnp.where(keep_all, b, a), new, old)

    initial = _initial_guesses(data)
    # the SCFs of the next evaluation start from this one's densities if it was accepted (the next
    # proposal is near it), else from the guesses this one started from (the first step's
    # starting points after a failure)
    warm = [jnp.where(c[:, None, None, None], p, g) for c, p, g in zip(converged, densities, carry.guesses)]
    guesses = [jnp.where(accepted, w, jnp.where(ok, g, g0)) for w, g, g0 in zip(warm, carry.guesses, initial)]
    next_carry = _Carry(keep(params, carry.params), keep(new_state, state), guesses)
    done = new_state.terminate & ~keep_all
    return _StepOutput(next_carry, ok, failure, total, terms, energies, converged, grad_norm, y_eval, accepted,
                       done)


class _StepRaised(Exception):
    """The compiled step raised at run time (e.g. an `equinox.error_if` check of a model)."""


def _wait(tree) -> None:
    """Wait for the arrays of `tree` in Python (short sleeps), not in XLA: a Ctrl-C then
    interrupts the wait at once instead of after the step."""
    for x in jax.tree.leaves(tree):
        is_ready = getattr(x, "is_ready", None)
        while is_ready is not None and not is_ready():
            time.sleep(0.005)


def _run_step(carry: _Carry, static, data: _StepData, optimizer, loss: LossSpec, max_scf_steps: int) -> _StepOutput:
    """`_step` on the host: its output as numpy arrays, or `_StepRaised` (one line)."""
    try:
        out = _step(carry, static, data, optimizer, loss, max_scf_steps)
        _wait(out)
        return jax.device_get(out)
    except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise _StepRaised(text[:300]) from None
