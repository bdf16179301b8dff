"""The model zoo inside the SCF: convergence, gradients vs finite differences, invariances,
size consistency.

Models are solved (and differentiated) in groups on one padded batch holding H2O, the same H2O
rotated, translated and with its atoms permuted (its grid moved with it, grid points shuffled),
and N2, so one solve (one compilation per group) covers the SCF acceptance and the invariances.
"""

import pathlib
import re
import types

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import nlxc
from nlxc.models import (
    MLP,
    AtomAttention,
    AtomCentredCorrection,
    AuxiliaryNeuralOperator,
    CoarseGraphNetwork,
    EquivariantCorrection,
    GridAtomMessagePassing,
    GridAttention,
    GridGraphNetwork,
    LocalHybrid,
    NonlocalEnhancedExchange,
)
from nlxc.models import atom_neighbours, grid_neighbours
from nlxc.xc import PBEExchange, PW92Correlation, SlaterExchange

# no xdist group: with nine models (one ~50 s compilation each) the tests are spread over both
# workers; each worker builds the small module-scoped fixtures itself (a few seconds)

H2O = [("O", (0.0, 0.0, 0.1173)), ("H", (0.0, 0.7572, -0.4692)), ("H", (0.0, -0.7572, -0.4692))]
N2 = [("N", (0.0, 0.0, 0.0)), ("N", (0.0, 0.0, 1.0977))]
BASIS, GRID_LEVEL = "6-31g", 0  # small: the checks are exact identities, not accuracy


def _mole(geometry):
    from pyscf import gto

    return gto.M(atom=[(s, p) for s, p in geometry], basis=BASIS, verbose=0)


def _grids(mol):
    from pyscf import dft

    g = dft.gen_grid.Grids(mol)
    g.level = GRID_LEVEL
    g.build(with_non0tab=False)
    return g


def _batch(grid_operators=None):
    """H2O; the same H2O rotated, translated, with its atoms permuted and its grid moved with it
    (grid points shuffled); N2."""
    mol = _mole(H2O)
    grids = _grids(mol)
    rotation = Rotation.from_euler("zyx", [0.7, -1.1, 0.4]).as_matrix()
    shift_bohr = np.array([0.9, -1.7, 2.3])
    bohr = 0.52917721092
    moved = [(s, tuple(rotation @ np.array(p) + shift_bohr * bohr)) for s, p in (H2O[1], H2O[0], H2O[2])]
    order = np.random.default_rng(0).permutation(len(grids.weights))
    moved_grids = types.SimpleNamespace(coords=(grids.coords @ rotation.T + shift_bohr)[order],
                                        weights=grids.weights[order])
    kw = {"grid_operators": grid_operators}
    systems = [
        nlxc.System.from_pyscf(mol, grids=grids, **kw),
        nlxc.System.from_pyscf(_mole(moved), grids=moved_grids, **kw),
        nlxc.System.from_pyscf(_mole(N2), grid_level=GRID_LEVEL, **kw),
    ]
    return nlxc.batch.stack(nlxc.pad_to_common_shape(systems))


def _local_hybrid(**kw):
    return LocalHybrid(omega=0.4, key=jr.key(0), **kw)


def _cider(**kw):
    # a shorter exponent ladder than the default (same spacing) keeps the operators small
    return NonlocalEnhancedExchange(scales=(0.5, 2.0), exponents=tuple(0.1 * 2.0**j for j in range(10)),
                                    key=jr.key(1), **kw)


# every grid operator any model below needs
SPEC = (AuxiliaryNeuralOperator(key=jr.key(0)).required_grid_operators | _local_hybrid().required_grid_operators
        | _cider().required_grid_operators)


@pytest.fixture(scope="module")
def operator_batch():
    """The `_batch` systems, padded and stacked, carrying the grid operators the models need."""
    return _batch(SPEC)


def _with_pbe(*models):
    return nlxc.xc.Sum((nlxc.get_functional("pbe"),) + models)


# Models are tested in groups: one SCF (and one ~40 s compilation of the SCF, its implicit
# adjoint and the models) per group instead of per model; each model must get a gradient, and the
# finite-difference check runs along a random direction in all the group's parameters.
MODELS = {
    "atom-centred+equivariant+attention": lambda: _with_pbe(
        AtomCentredCorrection(key=jr.key(2)), EquivariantCorrection(key=jr.key(3)), AtomAttention(key=jr.key(4))),
    "grid-graph+coarse-graph+grid-attention": lambda: _with_pbe(
        GridGraphNetwork(k=6, key=jr.key(6)), CoarseGraphNetwork(key=jr.key(8)),
        GridAttention(dim=4, key=jr.key(9))),  # smaller than the defaults (k=12, dim=8): the slowest group
    # the constrained local meta-GGA MLP as the baseline of the grid <-> atom models
    "local-mgga+grid-atom+aux-operator": lambda: (
        SlaterExchange() * MLP(2, key=jr.key(0)) + PW92Correlation.modified() * MLP(4, key=jr.key(1))
        + GridAtomMessagePassing(key=jr.key(5)) + AuxiliaryNeuralOperator(key=jr.key(10))),
    # both operator-based exchange models (the CIDER exchange's difference from PBE exchange
    # added to the local hybrid)
    "local-hybrid+cider": lambda: _local_hybrid() + _cider() + (-1.0) * PBEExchange(),
}


@pytest.mark.slow  # 200-290 s per group on 2 cores: the slow set, which .ci/run runs too
@pytest.mark.parametrize("name", list(MODELS))
def test_model_scf_gradients_and_invariances(operator_batch, name):
    """The model on the batch: converged, invariant, gradients equal finite differences."""
    functional = MODELS[name]()
    params, static = eqx.partition(functional, eqx.is_inexact_array)

    # the batch is an argument, not a closure: XLA would otherwise fold its arrays as constants
    def loss(params, batch, p0):
        f = eqx.combine(params, static)
        result = eqx.filter_vmap(lambda s, p: nlxc.solve(f, s, initial_density_matrix=p))(batch, p0)
        return jnp.sum(result.energy), result

    # one compilation serves the gradient and the finite differences
    value_and_grad = eqx.filter_jit(eqx.filter_value_and_grad(loss, has_aux=True))
    batch = operator_batch
    (value, result), grad = value_and_grad(params, batch, batch.initial_density_matrix)
    assert bool(jnp.all(result.converged)), result.n_iterations
    e = np.asarray(result.energy)
    # rotation + translation (grid moved with the molecule), atom and grid-point permutation
    assert abs(e[1] - e[0]) < 1e-8, e[1] - e[0]
    leaves = jax.tree.leaves(grad)
    assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    for term in grad.terms:  # every learnable model of the group gets a gradient
        own = jax.tree.leaves(term)
        assert not own or sum(float(jnp.sum(g**2)) for g in own) > 0, type(term).__name__
    # directional derivative against central finite differences through the whole SCF; the
    # perturbed SCFs start from the converged density (the fixed point does not depend on it)
    keys = jr.split(jr.key(7), len(leaves))
    direction = jax.tree.unflatten(jax.tree.structure(params),
                                   [jr.normal(k, x.shape, x.dtype) for k, x in zip(keys, jax.tree.leaves(params))])
    norm = jnp.sqrt(sum(jnp.sum(d**2) for d in jax.tree.leaves(direction)))
    direction = jax.tree.map(lambda d: d / norm, direction)
    eps = 1e-4
    (plus, _), _ = value_and_grad(jax.tree.map(lambda p, d: p + eps * d, params, direction), batch,
                                  result.density_matrix)
    (minus, _), _ = value_and_grad(jax.tree.map(lambda p, d: p - eps * d, params, direction), batch,
                                   result.density_matrix)
    fd = float((plus - minus) / (2 * eps))
    ad = float(sum(jnp.vdot(g, d) for g, d in zip(leaves, jax.tree.leaves(direction))))
    assert ad == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.fixture(scope="module")
def fragments():
    """H2O, N2 and the two 40 Bohr apart, each with its initial (atomic-superposition) density,
    padded to one shape and stacked (padding changes no energy: the batch test checks it)."""
    far = 40.0 * 0.52917721092
    dimer = H2O + [(s, (p[0] + far, p[1], p[2])) for s, p in N2]
    spec = AuxiliaryNeuralOperator(key=jr.key(0)).required_grid_operators
    systems = [nlxc.System.from_pyscf(_mole(g), grid_level=GRID_LEVEL, grid_operators=spec) for g in (H2O, N2, dimer)]
    return nlxc.batch.stack(nlxc.pad_to_common_shape(systems))


@pytest.mark.parametrize("model", [AtomCentredCorrection, EquivariantCorrection, AtomAttention, GridAtomMessagePassing,
                                   GridGraphNetwork, CoarseGraphNetwork, GridAttention, AuxiliaryNeuralOperator])
def test_model_size_consistency(fragments, model):
    f = model(key=jr.key(11), final_scale=1.0)

    @eqx.filter_jit
    @eqx.filter_vmap(in_axes=(None, 0))
    def energy(f, system):
        p = system.initial_density_matrix
        return f(nlxc.Density.from_density_matrix(p, system), p, system)

    a, b, ab = (float(e) for e in energy(f, fragments))
    assert abs(a) > 1e-4 and abs(b) > 1e-4  # the model is not trivially zero
    assert abs(ab - (a + b)) < 1e-8


def test_neighbour_lists_match_brute_force(fragments):
    """The k-d-tree neighbour lists equal a brute-force search, padding takes no part, and too
    small a capacity raises."""
    system = nlxc.batch.unstack(fragments)[2]  # H2O···N2
    system = nlxc.pad_system(system, ngrid=system.ngrid + 7, natom=6)
    coords, weights = np.asarray(system.grid_coords), np.asarray(system.grid_weights)
    atoms, charges = np.asarray(system.atom_coords), np.asarray(system.atom_charges)
    cutoff = 3.0
    nb = atom_neighbours(system.grid_coords, system.grid_weights, system.atom_coords, system.atom_charges, cutoff, 6)
    dist = np.linalg.norm(coords[:, None] - atoms[None], axis=-1)
    expected = (dist < cutoff) & (charges > 0)[None] & (weights != 0)[:, None]
    found = np.zeros_like(expected)
    rows, slots = np.nonzero(np.asarray(nb.mask))
    found[rows, np.asarray(nb.index)[rows, slots]] = True
    assert np.array_equal(found, expected) and np.asarray(nb.mask).sum() == expected.sum()
    with pytest.raises(Exception, match="max_atoms"):
        jax.block_until_ready(atom_neighbours(system.grid_coords, system.grid_weights, system.atom_coords,
                                              system.atom_charges, 6.0, 2).index)

    k = 5
    gn = grid_neighbours(system.grid_coords, system.grid_weights, k, cutoff)
    valid = np.flatnonzero(weights != 0)
    rng = np.random.default_rng(0)
    for i in rng.choice(valid, 50, replace=False):
        d = np.linalg.norm(coords[valid] - coords[i], axis=1)
        d[valid == i] = np.inf
        want = np.sort(d[d < cutoff])[: k + 1]
        got = np.linalg.norm(coords[np.asarray(gn.index[i])] - coords[i], axis=1)[np.asarray(gn.mask[i])]
        np.testing.assert_allclose(np.sort(got), want, rtol=0, atol=1e-12)
    assert not np.asarray(gn.mask)[weights == 0].any()


def test_prepared_batch_carries_the_lists_and_its_scf_holds_no_host_callback():
    """`nlxc.models.prepare_system` builds the neighbour lists on the host, per molecule of a padded
    batch: the same integers as the host callback under `vmap`, carried by the batched System, so
    the vmapped SCF of a prepared batch lowers without a host callback (JAX's persistent
    compilation cache can store it); an unprepared System traced inside `jit` still falls back to
    the callback."""
    from pyscf import gto

    systems = [nlxc.System.from_pyscf(gto.M(atom=atoms, basis="sto-3g", verbose=0), grid_level=0)
               for atoms in ("H 0 0 0; H 0 0 0.74", "Li 0 0 0; H 0 0 1.6")]
    model = AtomCentredCorrection(width=4, depth=1, embedding_dim=2, key=jr.key(0))
    functional = nlxc.get_functional("pbe") + model
    batch = nlxc.batch.make_batches(systems, max_buckets=1)[0]
    prepared = nlxc.models.prepare_system(functional, batch.system)
    (key,) = model.precomputed_keys
    ours = prepared.precomputed[key]
    callback = jax.vmap(lambda s: atom_neighbours(s.grid_coords, s.grid_weights, s.atom_coords, s.atom_charges,
                                                  model.neighbour_cutoff, model.max_atoms))(batch.system)
    for name in ("index", "mask", "overflow", "image", "translations"):
        a, b = getattr(ours, name), getattr(callback, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    assert np.asarray(ours.mask).any()

    def energies(system):
        return nlxc.batch.solve_batch(functional, system, max_steps=2, fallback=None, stability=None).energy

    assert "callback" not in jax.jit(energies).lower(prepared).as_text()
    assert "callback" in jax.jit(energies).lower(batch.system).as_text()


def test_writing_your_own_model_example_runs(capsys):
    """The complete example of docs/models.md ("Writing your own model") runs as written: a
    user-defined AbstractFunctional that declares its grid operators, composed with PBE by `+`,
    solved self-consistently on H2/6-31G (so the documentation cannot rot)."""
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    section = text[text.index("## Writing your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "docs/models.md (Writing your own model)", "exec"), namespace)
    functional, result = namespace["functional"], namespace["result"]
    model = namespace["HartreeCorrection"](key=jr.key(1))
    assert isinstance(model, nlxc.xc.AbstractFunctional) and isinstance(functional, nlxc.xc.Sum)
    # declared by the model, combined by the sum, read by the public function
    assert model.required_grid_operators == nlxc.GridOperatorSpec(omegas=(0.0,))
    assert functional.required_grid_operators == model.required_grid_operators
    assert nlxc.xc.required_grid_operators(functional) == model.required_grid_operators
    assert bool(result.converged) and np.isfinite(float(result.energy))
    assert capsys.readouterr().out.split() == [repr(float(result.energy)), "True"]
