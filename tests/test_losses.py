"""Losses of `nlxc.losses`: values against PySCF, gradients against finite differences, descent.

One batch of H2, LiH and H2O (6-31G, PySCF grid level 0) padded to one shape, with a masked
filler entry (`make_batches(batch_size=4)`), and B3LYP references computed here by PySCF through
`nlxc.data.compute_references` (density-fitted with the same JK-fit basis and grid as the
Systems). The learned functional is a small LDA hybrid, E_xc = c₀ E_x^Slater + c₁ E_c^VWN-RPA +
a E_x^HF, started at (0.9, 0.8, 0.15), away from B3LYP. (6-31G rather than STO-3G: in STO-3G
the H2 density is fixed by symmetry, and the implicit adjoint of the padded H2 energy hits a
BiCGStab breakdown, NaN, because its right-hand side is an exact eigenvector of the operator.)

Finite differences: a random direction v in parameter space (each parameter moved relative to
its size), fourth-order central differences with h = 1e-3 (1e-4 for the fixed-density group,
which has no SCF noise and whose constraint penalties have kinks in their second derivative);
the SCF losses are solved to max|ΔP| < 1e-11. Measured agreement 1e-9 to 1e-13; tolerance:
relative 1e-6.

Compile time dominates, so every group of losses is compiled once and evaluated at the shifted
parameters with the same program: the SCF losses share one SCF result, the fixed-density
losses and penalties share one program, the trajectory loss and the derivative loss have one
each. PySCF runs with one OpenMP thread (tiny molecules; its threads busy-wait on a loaded
machine).
"""

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nlxc
from nlxc import losses
from nlxc.batch import make_batches, solve_batch
from nlxc.scf import DIIS, UnrolledAdjoint
from nlxc.xc import AbstractFunctional, AbstractSemilocalFunctional, SlaterExchange, VWNRPACorrelation
from nlxc.xc.hybrid import exact_exchange_energy

pytestmark = pytest.mark.xdist_group("losses")

BASIS = "6-31g"
GRID_LEVEL = 0
GEOMETRIES = {  # Ångström
    "H2": [("H", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 0.74))],
    "LiH": [("Li", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 1.595))],
    "H2O": [("O", (0.0, 0.0, 0.1173)), ("H", (0.0, 0.7572, -0.4692)), ("H", (0.0, -0.7572, -0.4692))],
}
SOLVER = DIIS(atol=1e-11)
STEP = 1e-3
RTOL = 1e-6
C0 = (0.9, 0.8, 0.15)  # initial (Slater, VWN-RPA, exact exchange) coefficients


class LDAModel(AbstractSemilocalFunctional):
    """c₀ e_x^Slater + c₁ e_c^VWN-RPA (the baselines' own constants stay fixed)."""

    family = "lda"
    c: jax.Array

    def energy_density(self, rho, sigma, tau):
        return (self.c[0] * SlaterExchange().energy_density(rho, sigma, tau)
                + self.c[1] * VWNRPACorrelation().energy_density(rho, sigma, tau))


class Model(AbstractFunctional):
    """The learned LDA hybrid: LDAModel + a E_x^HF."""

    local: LDAModel
    a: jax.Array

    def __call__(self, density, density_matrix, system):
        return (self.local(density, density_matrix, system)
                + self.a * exact_exchange_energy(system.cderi, density_matrix, system.restricted))


def model(c=C0):
    return Model(LDAModel(jnp.asarray(c[:2], dtype=float)), jnp.asarray(c[2], dtype=float))


def xc_string(c):
    """The PySCF functional equal to `model(c)`."""
    return f"{c[2]!r}*HF + {c[0]!r}*LDA_X, {c[1]!r}*LDA_C_VWN_RPA"


def direction(params, seed=1):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, jnp.shape(x)) * jnp.maximum(jnp.abs(x), 1e-2)
                                        for k, x in zip(keys, leaves)])


def shifted(params, v, t):
    return jax.tree.map(lambda p, d: p + t * d, params, v)


def along(tree, v):
    return sum(float(jnp.vdot(a, b)) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(v)))


def finite_difference(f, params, v, step=STEP):
    """Fourth-order central difference of the (vector) f along v."""
    values = [np.asarray(f(shifted(params, v, k * step))) for k in (-2, -1, 1, 2)]
    return (values[0] - 8 * values[1] + 8 * values[2] - values[3]) / (12 * step)


def descend(value_and_grad, params, steps=2):
    """Plain gradient descent p ← p − η g; η starts at the Polyak step L/‖g‖² and is halved
    until the loss decreases (at most 12 times), then kept for the next step. Returns the losses."""
    value, grad = value_and_grad(params)
    values = [float(value)]
    eta = value / along(grad, grad)
    for _ in range(steps):
        for _ in range(12):
            trial = jax.tree.map(lambda p, g: p - eta * g, params, grad)
            new_value, new_grad = value_and_grad(trial)
            if new_value < value:
                break
            eta /= 2
        params, value, grad = trial, new_value, new_grad
        values.append(float(value))
    return values


# --------------------------------------------------------------------------------------------
# Shared data: Systems, batch, PySCF references
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def single_pyscf_thread():
    """PySCF's OpenMP threads busy-wait on a shared, loaded machine: these molecules are tiny."""
    from pyscf import lib

    with lib.with_omp_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pyscf import lib

    with lib.with_omp_threads(1):
        return _data(tmp_path_factory)


def _data(tmp_path_factory):
    from nlxc.data import BenchmarkSet, Molecule, Reaction, compute_references

    molecules = [Molecule.from_geometry(name, g) for name, g in GEOMETRIES.items()]
    names = [m.name for m in molecules]
    dataset = compute_references(molecules, tmp_path_factory.mktemp("losses") / "b3lyp.h5", methods=("b3lyp",),
                                 basis=BASIS, grid_level=GRID_LEVEL, progress=False)
    moles = [m.to_mole(BASIS) for m in molecules]
    systems = [nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL) for mol in moles]
    (batch,) = make_batches(systems, max_buckets=1, batch_size=4)
    assert np.asarray(batch.mask).tolist() == [True, True, True, False]
    targets = losses.Targets.from_dataset(batch, dataset, names, "b3lyp")
    energies = dataset.energies("b3lyp")
    reactions = (Reaction("r1", ("H2O", "H2"), (1.0, -1.0), 0.0),
                 Reaction("r2", ("LiH", "H2O", "H2"), (2.0, 1.0, -3.0), 0.0))
    reactions = tuple(dataclasses.replace(r, reference=r.energy(energies)) for r in reactions)
    bench = BenchmarkSet("test", tuple(molecules), reactions)
    return dict(molecules=molecules, names=names, dataset=dataset, moles=moles, systems=systems, batch=batch,
                targets=targets, reactions=losses.Reactions.from_benchmark_set(bench, names))


def entry(data, k):
    """The reference entry of batch row k."""
    return data["dataset"].entry(data["names"][int(data["batch"].index[k])], "b3lyp")


def with_nan_filler(targets, mask):
    """The targets with every label of the filler entries replaced by NaN."""
    filler = ~np.asarray(mask)

    def poison(x):
        if x is None:
            return None
        x = np.array(x)
        x[filler] = np.nan
        return jnp.asarray(x)

    return jax.tree.map(poison, targets, is_leaf=lambda x: x is None)


def value_and_jacobian(fn):
    """One compiled program: params ↦ (loss values (n,), their Jacobian (pytree, leading n), aux)."""

    @eqx.filter_jit
    def run(params, *args):
        values, vjp, aux = jax.vjp(lambda p: fn(p, *args), params, has_aux=True)
        (jac,) = jax.vmap(vjp)(jnp.eye(values.shape[0], dtype=values.dtype))
        return values, jac, aux

    return run


def row(jac, i):
    return jax.tree.map(lambda x: x[i], jac)


def check_gradients(run, params, names, step=STEP):
    """Reverse-mode Jacobian along a random direction vs fourth-order finite differences."""
    values, jac, _ = run(params)
    v = direction(params)
    analytic = np.array([along(row(jac, i), v) for i in range(len(names))])
    numeric = finite_difference(lambda p: run(p)[0], params, v, step)
    assert np.all(np.isfinite(analytic)) and np.all(np.abs(analytic) > 1e-8), dict(zip(names, analytic))
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=0, err_msg=str(names))
    return values


def check_descent(run, params, names, steps=2):
    for i, name in enumerate(names):
        values = descend(lambda p: (lambda out: (out[0][i], row(out[1], i)))(run(p)), params, steps)
        assert all(b < a for a, b in zip(values, values[1:])), (name, values)


# --------------------------------------------------------------------------------------------
# SCF losses (implicit adjoint): energy, Huber, density (L², Coulomb), reactions
# --------------------------------------------------------------------------------------------


def _scf_losses(params, static, batch, targets, reactions):
    f = eqx.combine(params, static)
    result = solve_batch(f, batch.system, solver=SOLVER)
    values = jnp.stack([
        losses.energy_loss(result, batch, targets),
        losses.energy_loss(result, batch, targets, kind="huber", delta=0.05),
        losses.density_loss(result, batch, targets),
        losses.density_loss(result, batch, targets, metric="coulomb"),
        losses.reaction_loss(result, batch, reactions),
    ])
    return values, (result.energy, result.density_matrix, result.converged, result.n_iterations)


SCF_NAMES = ("energy", "huber", "density_l2", "density_coulomb", "reaction")
_SCF_PROGRAM = value_and_jacobian(_scf_losses)


@pytest.fixture(scope="module")
def scf(data):
    params, static = eqx.partition(model(), eqx.is_inexact_array)

    def run(p, targets=None):
        return _SCF_PROGRAM(p, static, data["batch"], data["targets"] if targets is None else targets,
                            data["reactions"])

    return params, run, run(params)


def test_scf_loss_values_match_pyscf(data, scf):
    from pyscf import dft

    _, _, (values, _, (energy, dm, converged, _)) = scf
    assert bool(jnp.all(converged))
    energy, dm = np.asarray(energy), np.asarray(dm)
    targets, batch = data["targets"], data["batch"]
    e_ref = np.asarray(targets.energy)
    real = np.asarray(batch.mask)
    residual = energy[real] - e_ref[real]
    assert float(values[0]) == pytest.approx(np.mean(residual**2), rel=1e-12)
    huber = np.where(np.abs(residual) <= 0.05, 0.5 * residual**2, 0.05 * (np.abs(residual) - 0.025))
    assert float(values[1]) == pytest.approx(np.mean(huber), rel=1e-12)
    l2, coulomb = [], []
    for k in np.flatnonzero(real):
        i = int(batch.index[k])
        mol, nao = data["moles"][i], data["systems"][i].nao
        d = (dm[k] - np.asarray(targets.density_matrix[k])).sum(0)[:nao, :nao]
        grids = dft.gen_grid.Grids(mol)
        grids.level = GRID_LEVEL
        grids.build(with_non0tab=False)
        drho = dft.numint.NumInt().eval_rho(mol, dft.numint.eval_ao(mol, grids.coords), d)
        l2.append(np.sum(np.maximum(grids.weights, 0.0) * drho**2))
        coulomb.append(0.5 * np.einsum("ij,ijkl,kl->", d, mol.intor("int2e"), d))  # exact, not fitted
    assert float(values[2]) == pytest.approx(np.mean(l2), rel=1e-9)
    assert float(values[3]) == pytest.approx(np.mean(coulomb), rel=2e-3)  # density-fitting error
    by_name = {data["names"][int(i)]: e for i, e, m in zip(batch.index, energy, real) if m}
    reactions = data["reactions"]
    c = np.asarray(reactions.stoichiometry)
    e_vec = np.array([by_name[n] for n in data["names"]])
    assert float(values[4]) == pytest.approx(np.mean((c @ e_vec - np.asarray(reactions.reference)) ** 2), rel=1e-12)


def test_scf_loss_gradients_match_finite_differences(scf):
    params, run, _ = scf
    check_gradients(run, params, SCF_NAMES)


def test_scf_losses_decrease_under_gradient_descent(scf):
    params, run, _ = scf
    check_descent(run, params, SCF_NAMES)


def test_filler_entries_contribute_nothing(data, scf):
    """NaN labels on the filler entry change neither the losses nor their gradients."""
    params, run, (values, jac, _) = scf
    poisoned = with_nan_filler(data["targets"], data["batch"].mask)
    assert np.isnan(np.asarray(poisoned.energy)[3])
    values2, jac2, _ = run(params, poisoned)
    np.testing.assert_array_equal(np.asarray(values2), np.asarray(values))
    for a, b in zip(jax.tree.leaves(jac2), jax.tree.leaves(jac)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    fixed_values, fixed_jac, _ = fixed_program(data)(params, poisoned)
    ref_values, ref_jac, _ = fixed_program(data)(params)
    np.testing.assert_array_equal(np.asarray(fixed_values), np.asarray(ref_values))
    for a, b in zip(jax.tree.leaves(fixed_jac), jax.tree.leaves(ref_jac)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------------------------------------
# Trajectory loss (unrolled SCF, Li et al.)
# --------------------------------------------------------------------------------------------

TRAJECTORY_STEPS = 20


def _trajectory(params, static, batch, targets, weights):
    f = eqx.combine(params, static)
    result = solve_batch(f, batch.system, solver=SOLVER, adjoint=UnrolledAdjoint(), max_steps=TRAJECTORY_STEPS)
    value = losses.trajectory_loss(result, batch, targets, weights=weights, density_weight=1.0)
    return value[None], None


_TRAJECTORY_PROGRAM = value_and_jacobian(_trajectory)


def test_trajectory_loss(data, scf):
    params, _, (scf_values, _, (_, _, _, n_iterations)) = scf
    assert int(jnp.max(n_iterations)) < TRAJECTORY_STEPS - 2  # the unrolled SCF converges
    static = eqx.partition(model(), eqx.is_inexact_array)[1]
    weights = losses.trajectory_weights(TRAJECTORY_STEPS, discount=0.9, skip=2)
    assert np.asarray(weights)[:2].tolist() == [0.0, 0.0] and float(weights[-1]) == 1.0

    def run_w(p, w=weights):
        return _TRAJECTORY_PROGRAM(p, static, data["batch"], data["targets"], w)

    # only the last iteration weighted: the converged energy loss plus the density loss
    last = jnp.zeros(TRAJECTORY_STEPS).at[-1].set(1.0)
    assert float(run_w(params, last)[0][0]) == pytest.approx(float(scf_values[0] + scf_values[2]), rel=1e-9)
    values = check_gradients(run_w, params, ("trajectory",))
    assert float(values[0]) > float(run_w(params, last)[0][0])  # earlier iterations add error
    check_descent(run_w, params, ("trajectory",))
    poisoned = with_nan_filler(data["targets"], data["batch"].mask)
    values2, jac2, _ = _TRAJECTORY_PROGRAM(params, static, data["batch"], poisoned, weights)
    np.testing.assert_array_equal(np.asarray(values2), np.asarray(values))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(jac2))


# --------------------------------------------------------------------------------------------
# Fixed-density losses and penalties (no SCF)
# --------------------------------------------------------------------------------------------

RS = jnp.array([0.5, 1.0, 2.0, 5.0])
ZETA = jnp.array([0.0, 0.3, 0.7, 1.0])
FIXED_NAMES = ("nsc_mse", "nsc_mae", "uniform_gas", "correlation_sign", "lieb_oxford_local",
               "lieb_oxford_global", "spin_scaling")


def _fixed_losses(params, static, batch, targets, polarised):
    f = eqx.combine(params, static)
    c = f.local.c
    # a model correlation whose sign changes on the grid (positive where |ε_c| > 0.28 |ε_x|, at
    # low density), and a model exchange-correlation that breaks the local Lieb–Oxford bound at
    # high density
    correlation = LDAModel(jnp.stack([0.25 * c[0], -c[1]]))
    strong = LDAModel(jnp.stack([c[0] + 1.5, c[1] - 1.0]))
    over = functools.partial(losses.penalty_over_batch, batch=batch, density_matrices=targets.density_matrix)
    values = jnp.stack([
        losses.non_self_consistent_loss(f, batch, targets),
        losses.non_self_consistent_loss(f, batch, targets, kind="mae"),
        nlxc.xc.uniform_gas_penalty(f.local, RS, ZETA),
        over(nlxc.xc.correlation_sign_penalty, correlation),
        over(nlxc.xc.lieb_oxford_penalty, strong),
        over(functools.partial(nlxc.xc.lieb_oxford_penalty, bound=0.5), f),  # global form (a hybrid)
        losses.penalty_over_batch(nlxc.xc.spin_scaling_penalty, f.local, batch, polarised),
    ])
    return values, None


_FIXED_PROGRAM = value_and_jacobian(_fixed_losses)


def fixed_program(data):
    static = eqx.partition(model(), eqx.is_inexact_array)[1]
    polarised = data["targets"].density_matrix * jnp.array([1.0, 0.6])[None, :, None, None]

    def run(p, targets=None):
        return _FIXED_PROGRAM(p, static, data["batch"], data["targets"] if targets is None else targets, polarised)

    return run


def test_fixed_density_losses_and_penalties(data):
    run = fixed_program(data)
    params = eqx.partition(model(), eqx.is_inexact_array)[0]
    # no SCF noise here, and a smaller step keeps fewer grid points crossing the constraint
    # boundaries (kinks of the second derivative) inside the stencil
    values = check_gradients(run, params, FIXED_NAMES, step=1e-4)
    assert np.all(np.asarray(values) > 0)
    # the non-self-consistent energies are E_θ[P_ref]
    targets, batch = data["targets"], data["batch"]
    f = model()
    e = [float(nlxc.scf.energy_components(f, jax.tree.map(lambda x: x[k], batch.system),
                                          targets.density_matrix[k]).total) for k in range(3)]
    assert float(values[0]) == pytest.approx(np.mean((np.array(e) - np.asarray(targets.energy[:3])) ** 2), rel=1e-10)
    check_descent(run, params, FIXED_NAMES)


def test_penalties_vanish_when_the_constraint_holds(data):
    from nlxc.xc import PW92Correlation, Scaled, SemilocalSum

    s = data["systems"][2]
    p = jnp.asarray(entry(data, 2).density_matrix)
    lsda = SemilocalSum(coefficients=[1.0, 1.0], terms=(SlaterExchange(), PW92Correlation()))
    assert float(nlxc.xc.uniform_gas_penalty(lsda, RS, ZETA)) == 0.0
    assert float(nlxc.xc.uniform_gas_penalty(SlaterExchange(), RS, ZETA, reference=SlaterExchange())) == 0.0
    assert float(nlxc.xc.correlation_sign_penalty(VWNRPACorrelation(), s, p)) == 0.0
    assert float(nlxc.xc.lieb_oxford_penalty(lsda, s, p)) == 0.0
    polarised = p * jnp.array([1.0, 0.6])[:, None, None]
    assert float(nlxc.xc.spin_scaling_penalty(SlaterExchange(), s, polarised)) < 1e-24
    assert float(nlxc.xc.spin_scaling_penalty(nlxc.xc.HF(), s, polarised)) < 1e-24
    assert float(nlxc.xc.spin_scaling_penalty(PW92Correlation(), s, polarised)) > 1e-6
    e_c = nlxc.scf.energy_components(PW92Correlation(), s, p).xc
    minus = Scaled(jnp.asarray(-1.0), PW92Correlation())  # not semilocal: the global form
    assert float(nlxc.xc.correlation_sign_penalty(minus, s, p)) == pytest.approx(float(e_c) ** 2, rel=1e-12)
    with pytest.raises(nlxc.InputError, match="semilocal"):
        nlxc.xc.uniform_gas_penalty(nlxc.xc.HF(), RS)


def test_size_consistency_penalty(data):
    """Two H2 molecules 30 Å apart: LDA is size-consistent up to the quadrature, E_xc² is not."""
    from pyscf import gto

    h2 = data["systems"][0]
    p = jnp.asarray(entry(data, 0).density_matrix)
    mol = gto.M(atom="H 0 0 0; H 0 0 0.74; H 0 0 30; H 0 0 30.74", basis=BASIS, verbose=0)
    dimer = nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL)
    z = jnp.zeros_like(p)
    p2 = jnp.concatenate([jnp.concatenate([p, z], 2), jnp.concatenate([z, p], 2)], 1)

    class Squared(AbstractFunctional):
        def __call__(self, density, density_matrix, system):
            return -SlaterExchange()(density, density_matrix, system) ** 2

    penalty = eqx.filter_jit(nlxc.xc.size_consistency_penalty)
    e_x = float(nlxc.scf.energy_components(SlaterExchange(), h2, p).xc)
    small = float(penalty(nlxc.get_functional("svwn"), (dimer, p2), [(h2, p), (h2, p)]))
    large = float(penalty(Squared(), (dimer, p2), [(h2, p), (h2, p)]))
    assert small < 1e-8
    assert large == pytest.approx((2 * e_x**2) ** 2, rel=1e-4)


# --------------------------------------------------------------------------------------------
# Derivative-informed loss: orbital gradient and Hessian against PySCF's response
# --------------------------------------------------------------------------------------------


def pyscf_mf(mol, xc, system, p, restricted=True):
    """A PySCF KS object with nlxc's settings whose orbitals (no SCF run) are the natural
    orbitals of the α/β density matrices p, so that its response kernel sees exactly p."""
    from pyscf import df, dft

    mf = (dft.RKS if restricted else dft.UKS)(mol, xc=xc)
    mf.grids.level = GRID_LEVEL
    mf.small_rho_cutoff = 0.0
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    x, s = np.asarray(system.orthogonalizer), np.asarray(system.overlap)
    occ, u = np.linalg.eigh(np.einsum("mi,smn,nj->sij", s @ x, np.asarray(p), s @ x))
    c = np.einsum("mi,sij->smj", x, u)
    mf.mo_coeff, mf.mo_occ = (c[0], 2 * occ[0]) if restricted else (c, occ)
    return mf


def pyscf_derivatives(mf, system, p, rotations, restricted=True):
    """(2 Q F P, [2 Q (dF[V + Vᵀ] + F V − V F) P for V in rotations]) in nlxc's orthonormal basis."""
    x, s = np.asarray(system.orthogonalizer), np.asarray(system.overlap)
    nmo = x.shape[1]
    pp = np.einsum("mi,smn,nj->sij", s @ x, p, s @ x)
    qq = np.eye(nmo)[None] - pp
    dm = p.sum(0) if restricted else p
    fock = np.asarray(mf.get_fock(dm=dm))
    fock = np.stack([fock, fock]) if restricted else fock
    f = np.einsum("mi,smn,nj->sij", x, fock, x)
    response = mf.gen_response(hermi=1)  # RKS: the Fock response to the total density change
    grad = 2 * qq @ f @ pp
    products = []
    for v in rotations:
        v = v[:, :nmo, :nmo]
        dp = np.einsum("mi,sij,nj->smn", x, v + np.swapaxes(v, 1, 2), x)
        df_ao = response(dp[0] + dp[1]) if restricted else response(dp)
        df_ao = np.stack([df_ao, df_ao]) if restricted else np.asarray(df_ao)
        dfo = np.einsum("mi,smn,nj->sij", x, df_ao, x)
        products.append(2 * qq @ (dfo + f @ v - v @ f) @ pp)
    return grad, np.array(products)


def pad(a, n):
    out = np.zeros(a.shape[:-2] + (n, n))
    out[..., : a.shape[-2], : a.shape[-1]] = a
    return out


def _derivative(params, static, batch, targets):
    f = eqx.combine(params, static)
    return jnp.stack([losses.derivative_loss(f, batch, targets),
                      losses.derivative_loss(f, batch, targets, hessian_weight=0.0)]), None


_DERIVATIVE_PROGRAM = value_and_jacobian(_derivative)


@pytest.fixture(scope="module")
def derivative_targets(data):
    """B3LYP's orbital gradient and Hessian products (PySCF) on random rotations (nlxc)."""
    from pyscf import lib

    with lib.with_omp_threads(1):
        return _derivative_targets(data)


def _derivative_targets(data):
    batch, targets = data["batch"], data["targets"]
    nmo = batch.system.orthogonalizer.shape[-1]
    with_model = targets.with_derivatives(model(), batch, key=jax.random.PRNGKey(0), n_directions=2)
    rotations = np.asarray(with_model.rotations)
    products = np.zeros_like(rotations)
    expected = []  # PySCF's derivative-loss terms per molecule
    for k in range(3):
        i = int(batch.index[k])
        system, mol, e = data["systems"][i], data["moles"][i], entry(data, k)
        p = np.asarray(e.density_matrix)
        g_ref, hv_ref = pyscf_derivatives(pyscf_mf(mol, "b3lyp", system, p), system, p, rotations[k])
        mf_model = pyscf_mf(mol, xc_string(C0), system, p)
        g_mod, hv_mod = pyscf_derivatives(mf_model, system, p, rotations[k])
        # with_derivatives (nlxc, the model as reference) agrees with PySCF's Fock matrix and response
        fock = np.asarray(with_model.fock_matrix[k])[:, : system.nao, : system.nao]
        np.testing.assert_allclose(fock, np.stack([mf_model.get_fock(dm=p.sum(0))] * 2), rtol=0, atol=1e-10)
        np.testing.assert_allclose(np.asarray(with_model.hessian_products[k]), pad(hv_mod, nmo), rtol=0, atol=1e-9)
        assert np.abs(g_ref).max() < 1e-6  # B3LYP's own SCF density is stationary
        products[k] = pad(hv_ref, nmo)
        expected.append((np.sum((g_mod - g_ref) ** 2), np.mean(np.sum((hv_mod - hv_ref) ** 2, axis=(1, 2, 3)))))
    products[3] = products[2]  # the filler copies the last real entry
    b3lyp = dataclasses.replace(with_model, fock_matrix=targets.fock_matrix, hessian_products=products)
    return b3lyp, np.array(expected)


def test_derivative_loss(data, derivative_targets):
    targets, expected = derivative_targets
    batch = data["batch"]
    rotations = np.asarray(targets.rotations)
    # unit-norm, occupied-virtual, spin-symmetric (restricted) directions; padded orbitals excluded
    np.testing.assert_allclose(np.sum(rotations[:3] ** 2, axis=(2, 3, 4)), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(rotations[:, :, 0], rotations[:, :, 1])
    assert np.all(rotations[0, :, :, 4:, :] == 0) and np.all(rotations[0, :, :, :, 4:] == 0)  # H2: 4 orbitals
    params, static = eqx.partition(model(), eqx.is_inexact_array)

    def run(p, t=targets):
        return _DERIVATIVE_PROGRAM(p, static, batch, t)

    values = check_gradients(run, params, ("derivative", "derivative_gradient_only"))
    np.testing.assert_allclose(np.asarray(values), [np.mean(expected.sum(1)), np.mean(expected[:, 0])], rtol=1e-8)
    check_descent(run, params, ("derivative", "derivative_gradient_only"))
    poisoned = with_nan_filler(targets, batch.mask)
    values2, jac2, _ = run(params, poisoned)
    np.testing.assert_array_equal(np.asarray(values2), np.asarray(values))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(jac2))


def test_orbital_hessian_unrestricted_matches_pyscf(data):
    """Spin-resolved (α ≠ β) rotations of H2O solved unrestricted: the α/β blocks of the response."""
    from nlxc.batch import as_unrestricted

    system = as_unrestricted(data["systems"][2])
    e = data["dataset"].entry("H2O", "b3lyp")
    p = jnp.asarray(e.density_matrix)
    v = losses.random_rotations(jax.random.PRNGKey(3), system, p, 1)[0]
    assert float(jnp.max(jnp.abs(v[0] - v[1]))) > 1e-3
    both = eqx.filter_jit(lambda f: (losses.ov_gradient(f, system, p),
                                     losses.orbital_hessian_product(f, system, p, v)))
    g, hv = both(model())
    mf = pyscf_mf(data["moles"][2], xc_string(C0), system, p, restricted=False)
    g_ref, hv_ref = pyscf_derivatives(mf, system, np.asarray(p), np.asarray(v)[None], restricted=False)
    np.testing.assert_allclose(np.asarray(g), g_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(hv), hv_ref[0], rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_one_line_errors(data):
    batch, targets = data["batch"], data["targets"]
    f = model()
    # SCF results as shapes only (the checks are static): one implicit, one unrolled for 5 steps,
    # and one of a batch of 3
    result = eqx.filter_eval_shape(solve_batch, f, batch.system, solver=SOLVER)
    unrolled = eqx.filter_eval_shape(solve_batch, f, batch.system, adjoint=UnrolledAdjoint(), max_steps=5)
    result3 = jax.tree.map(lambda x: jax.ShapeDtypeStruct((3,) + x.shape[1:], x.dtype), result)
    short = losses.Targets(energy=targets.energy[:3])
    cases = [
        (lambda: losses.energy_loss(result, batch, short), "batch has 4 entries"),
        (lambda: losses.energy_loss(result, batch, targets, kind="rmse"), "unknown kind 'rmse'"),
        (lambda: losses.energy_loss(result, batch, targets, reduction="median"), "unknown reduction"),
        (lambda: losses.density_loss(result, batch, targets, reduction="median"), "unknown reduction"),
        (lambda: losses.reaction_loss(result, batch, data["reactions"], reduction="median"), "unknown reduction"),
        (lambda: losses.non_self_consistent_loss(f, batch, targets, reduction="median"), "unknown reduction"),
        (lambda: losses.energy_loss(result, batch.system, targets), "expected an nlxc.batch.Batch"),
        (lambda: losses.energy_loss(f, batch, targets), "result must be the batch's nlxc.SCFResult"),
        (lambda: losses.energy_loss(result3, batch, targets), "result has energies of shape"),
        (lambda: losses.reaction_loss([result, result], batch, data["reactions"]), "2 results for 1 batches"),
        (lambda: losses.density_loss(result, batch, targets, metric="l1"), "unknown metric"),
        (lambda: losses.density_loss(result, batch, losses.Targets(energy=targets.energy)),
         "needs targets.density_matrix"),
        (lambda: losses.non_self_consistent_loss(
            f, batch, dataclasses.replace(targets, density_matrix=targets.density_matrix[:, :, :5, :5])),
         "expected"),
        (lambda: losses.density_difference(batch.system, targets.density_matrix, targets.density_matrix,
                                           negative_weights="drop"), "unknown negative_weights"),
        (lambda: losses.trajectory_loss(unrolled, batch, targets, weights=jnp.ones(4)), "shape"),
        (lambda: losses.trajectory_loss(result, batch, targets), "needs an nlxc.scf.UnrolledAdjoint"),
        (lambda: losses.trajectory_weights(5, discount=1.5), "discount"),
        (lambda: losses.derivative_loss(f, batch, targets), "needs targets.rotations"),
        (lambda: losses.derivative_loss(f, batch, targets, gradient_weight=0, hessian_weight=0), "both zero"),
        (lambda: losses.Reactions(jnp.ones((2, 3)), jnp.ones(3)), "do not match"),
        (lambda: losses.reaction_loss(result, batch, losses.Reactions(jnp.ones((1, 2)), jnp.ones(1))), "beyond"),
        (lambda: losses.Targets.from_entries(batch, {0: entry(data, 1), 1: entry(data, 1), 2: entry(data, 2)}),
         "basis functions"),
        (lambda: losses.Targets.from_entries(batch, {0: entry(data, 0)}), "no reference entry"),
        (lambda: losses.errors(jnp.zeros(2), "huber", delta=0.0), "delta"),
    ]
    for call, message in cases:
        with pytest.raises(nlxc.InputError, match=message.replace("(", r"\(").replace(".", r"\.")) as info:
            call()
        assert "\n" not in str(info.value)
    assert issubclass(nlxc.InputError, ValueError)
