"""Padded, bucketed and vmapped batches of molecules give the per-molecule results.

A mixed batch: N2 (closed shell, solved restricted on its own), CH2 (triplet) and H2O, of
different numbers of basis functions, auxiliary functions and grid points. Each molecule is
solved alone, unpadded, and the batch is solved padded to one shape under one `jax.vmap`;
energies, density matrices and the gradient of the summed energy with respect to the
functional's parameters (implicit adjoint through every SCF) must agree to 1e-10.
"""

import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import system

import nlxc
from nlxc.batch import BucketShape, as_unrestricted, choose_buckets, make_batches, stack, unstack
from nlxc.scf import DIIS, solve

pytestmark = pytest.mark.xdist_group("batch")

NAMES = ("n2", "ch2", "h2o")
SOLVER = DIIS(atol=1e-11)
TOL = 1e-10


def _energy(functional, s):
    result = solve(functional, s, SOLVER)
    return result.energy, result


def _batch_energy(functional, s):
    result = jax.vmap(lambda x: solve(functional, x, SOLVER))(s)
    return result.energy.sum(), result


@pytest.fixture(scope="module")
def functional():
    return nlxc.get_functional("pbe0")


@pytest.fixture(scope="module")
def per_molecule(functional):
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_energy, has_aux=True))
    return {name: value_and_grad(functional, system(name)) for name in NAMES}


def test_sizes_differ_and_shells_mix():
    sizes = {(system(n).nao, system(n).naux, system(n).ngrid) for n in NAMES}
    assert len(sizes) == len(NAMES)
    assert len({system(n).nao for n in NAMES}) > 1
    assert {system(n).restricted for n in NAMES} == {True, False}


def test_padded_vmapped_batch_equals_unpadded_molecules(functional, per_molecule):
    systems = [system(n) for n in NAMES]
    (batch,) = make_batches(systems, max_buckets=1, split_shells=False)
    assert not batch.system.restricted  # mixed shells are solved unrestricted
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(_batch_energy, has_aux=True))
    (_, result), grad = value_and_grad(functional, batch.system)
    assert bool(jnp.all(result.converged))
    for k, i in enumerate(np.asarray(batch.index)):
        (energy, alone), _ = per_molecule[NAMES[i]]
        nao = systems[i].nao
        assert abs(result.energy[k] - energy) < TOL
        p = result.density_matrix[k]
        np.testing.assert_allclose(p[:, :nao, :nao], alone.density_matrix, rtol=0, atol=TOL)
        outside = np.asarray(p).copy()
        outside[:, :nao, :nao] = 0.0
        assert np.all(outside == 0.0)  # padded basis functions stay empty
        assert int(result.n_iterations[k]) == int(alone.n_iterations)
    expected = jax.tree.map(lambda *g: sum(g), *[per_molecule[n][1] for n in NAMES])
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grad)) > 1e-3  # not trivially zero


def test_stack_unstack_and_restricted_promotion():
    s = system("n2")
    assert s.restricted and not as_unrestricted(s).restricted
    (batch,) = make_batches([s, s], max_buckets=1)
    assert batch.system.restricted  # no open shell: stays restricted
    back = unstack(stack([s, s]))
    assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(back[1]), jax.tree.leaves(s)))
    with pytest.raises(ValueError, match="different"):
        stack([system("n2"), system("h2o")])


def test_buckets_cover_every_molecule_once_with_bounded_padding():
    systems = [system(n) for n in NAMES] + [system("h2o"), system("n2")]
    for k in (1, 2, 3):
        groups = choose_buckets(systems, k)
        assert len(groups) <= k
        assert sorted(i for g in groups for i in g) == list(range(len(systems)))
    # with as many buckets as distinct shapes nothing is padded
    groups = choose_buckets(systems, 3)
    for g in groups:
        shape = BucketShape.covering([systems[i] for i in g])
        assert all(shape == BucketShape.covering([systems[i]]) for i in g)
    for b in make_batches(systems, max_buckets=2):  # default: shells in separate buckets
        members = [systems[int(i)] for i in b.index]
        assert b.system.restricted == all(m.restricted for m in members)
        assert len({m.restricted for m in members}) == 1
    batches = make_batches(systems, max_buckets=2, batch_size=2)
    assert all(len(b) == 2 for b in batches)
    real = sorted(int(i) for b in batches for i, m in zip(b.index, b.mask) if m)
    assert real == list(range(len(systems)))
    assert all(int(i) == -1 for b in batches for i, m in zip(b.index, b.mask) if not m)


SHARDED = textwrap.dedent(
    """
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    sys.path.insert(0, {tests!r})
    import equinox as eqx, jax, jax.numpy as jnp, numpy as np
    import nlxc
    from jax.sharding import Mesh
    from nlxc.batch import make_batches, shard
    from nlxc.scf import DIIS, solve
    from conftest import system
    assert jax.device_count() == 4, jax.devices()
    f = nlxc.get_functional("svwn")
    (batch,) = make_batches([system(n) for n in ("n2", "ch2", "h2o")], max_buckets=1, batch_size=4,
                            split_shells=False)
    def loss(f, s, mask):
        e = jax.vmap(lambda x: solve(f, x, DIIS(atol=1e-11)).energy)(s)
        return jnp.sum(jnp.where(mask, e, 0.0)), e
    vg = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    (_, e1), g1 = vg(f, batch.system, batch.mask)
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharded = shard(batch, mesh)
    assert len(sharded.system.ao_blocks.values[0].sharding.device_set) == 4
    (_, e4), g4 = vg(f, sharded.system, sharded.mask)
    assert len(e4.sharding.device_set) == 4, e4.sharding
    de = float(jnp.max(jnp.abs(e4 - e1)))
    dg = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(g4), jax.tree.leaves(g1)))
    print(json.dumps({{"de": de, "dg": dg, "e": np.asarray(e1).tolist()}}))
    """
)


@pytest.mark.slow  # 100 s on 2 cores: the slow set, which .ci/run runs too
def test_sharded_batch_equals_single_device():
    """Data-parallel over 4 (forced host) CPU devices: same energies and gradients."""
    import json

    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED.format(tests=tests)], capture_output=True, text=True, env=env,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    assert numbers["de"] < TOL and numbers["dg"] < TOL
    assert all(e < -30 for e in numbers["e"])  # four real energies (one a filler copy)
