"""The compiled training step: SCFs, losses, gradient and update, failures as values."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

from .. import losses as L
from .._config import (
    LOSS_TERMS,
    LossConfig,
)
from ..scf import FailAsValue, ImplicitAdjoint, SCFImplicitAdjoint, solve
from ._data import _StepData

# --------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------


class LossSpec(eqx.Module):
    """The training loss of a run (`[loss]` of the config), static in the compiled step.

    - `weights`: `(term, weight)` pairs of the loss terms in use (`LOSS_TERMS`).
    - `kind`: the error measure of the energy terms (`nlxc.losses.KINDS`).
    - `metric`: the density metric of the `density` term (`nlxc.losses.METRICS`).
    """

    weights: tuple[tuple[str, float], ...] = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    metric: str = eqx.field(static=True)

    @classmethod
    def from_config(cls, config: LossConfig) -> LossSpec:
        return cls(tuple(sorted(config.weights().items())), config.kind, config.density_metric)


def _split_losses(functional, data: _StepData, results, loss: LossSpec):
    """(3,) losses of the splits and a dict of (3,) per-term values."""
    weights, kind, metric = dict(loss.weights), loss.kind, loss.metric
    terms = {}
    for term in LOSS_TERMS:
        if term not in weights:
            continue
        if term == "atomization":
            values = [L.reaction_loss(results, data.batches,
                                      dataclasses.replace(data.reactions, weight=data.reaction_weights[s]),
                                      kind=kind) for s in range(3)]
            terms[term] = jnp.stack(values)
            continue
        sums, norms = jnp.zeros(3), jnp.zeros(3)
        for b, t, w, r in zip(data.batches, data.targets, data.molecule_weights, results):
            for s in range(3):
                ts = dataclasses.replace(t, weight=w[s])
                if term == "energy":
                    v = L.energy_loss(r, b, ts, kind=kind, reduction="sum")
                elif term == "density":
                    v = L.density_loss(r, b, ts, metric=metric, reduction="sum")
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
def _step(carry: _Carry, static, data: _StepData, optimizer, loss: LossSpec, max_scf_steps: int) -> _StepOutput:
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


def _run_step(carry: _Carry, static, data: _StepData, optimizer, loss: LossSpec, max_scf_steps: int) -> _StepOutput:
    """`_step` on the host: its output as numpy arrays, or `_StepRaised` (one line)."""
    try:
        out = _step(carry, static, data, optimizer, loss, max_scf_steps)
        _wait(out)
        return jax.device_get(out)
    except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise _StepRaised(text[:300]) from None
