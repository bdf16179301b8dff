"""Auxiliary-basis grid operators, local exact exchange, the DM21-like local hybrid and the
CIDER-style nonlocal exchange.

References come from PySCF, computed here (integrals, exact and density-fitted exchange,
libxc's attenuated LDA exchange), never from nlxc itself. The SCF, gradient and invariance checks
of the two models are in tests/test_models.py (entry "local-hybrid+cider"); size consistency at
40 Bohr is here.
"""


import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.linalg

import nlxc
from nlxc.models import (
    LocalHybrid,
    NonlocalEnhancedExchange,
    gaussian_density_descriptors,
    local_exact_exchange,
    uniform_gas_long_range_fraction,
)
from nlxc.xc import PBEExchange
from nlxc.xc.hybrid import exact_exchange_energy

pytestmark = pytest.mark.xdist_group("local-hybrid")

H2O = [("O", (0.0, 0.0, 0.1173)), ("H", (0.0, 0.7572, -0.4692)), ("H", (0.0, -0.7572, -0.4692))]
N2 = [("N", (0.0, 0.0, 0.0)), ("N", (0.0, 0.0, 1.0977))]
BASIS, GRID_LEVEL = "6-31g", 0
OMEGA = 0.4
# a shorter ladder than the default (same spacing) keeps the operators small
LADDER = tuple(0.1 * 2.0**j for j in range(10))
SCALES = (0.5, 2.0)


def _mole(geometry):
    from pyscf import gto

    return gto.M(atom=[(s, p) for s, p in geometry], basis=BASIS, verbose=0)


def _grids(mol, level=GRID_LEVEL):
    from pyscf import dft

    g = dft.gen_grid.Grids(mol)
    g.level = level
    g.build(with_non0tab=False)
    return g


def _local_hybrid(**kw):
    return LocalHybrid(omega=OMEGA, key=jr.key(0), **kw)


def _cider(**kw):
    return NonlocalEnhancedExchange(scales=SCALES, exponents=LADDER, key=jr.key(1), **kw)


SPEC = _local_hybrid().required_grid_operators | _cider().required_grid_operators


def _pyscf_df(mol):
    """PySCF's auxiliary molecule, the Cholesky factor of its Coulomb metric and (Q|μν)."""
    from pyscf import df

    auxmol = df.addons.make_auxmol(mol, df.make_auxbasis(mol))
    low = scipy.linalg.cholesky(auxmol.intor("int2c2e", hermi=1), lower=True)
    j3c = df.incore.aux_e2(mol, auxmol, intor="int3c2e", aosym="s1").reshape(mol.nao, mol.nao, -1)
    return auxmol, low, j3c


@pytest.fixture(scope="module")
def water():
    """H2O/6-31G on grid level 0 with every operator, and PySCF's DF-RHF density matrix."""
    from pyscf import scf

    mol = _mole(H2O)
    system = nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL, grid_operators=SPEC)
    mf = scf.RHF(mol).density_fit()
    mf.kernel()
    dm = mf.make_rdm1() / 2
    return mol, system, dm


def test_grid_operators_match_pyscf(water):
    """L⁻¹(Q|μν) is the System's DF tensor; the operators map it to PySCF's potentials (exact,
    non-DF, up to the fitting error) and Gaussian smoothings; Π = X S⁻¹ L."""
    from pyscf import dft, gto

    mol, system, dm = water
    ops = system.grid_operators
    auxmol, low, j3c = _pyscf_df(mol)
    b = scipy.linalg.solve_triangular(low, j3c.reshape(-1, auxmol.nao).T, lower=True).reshape(-1, mol.nao, mol.nao)
    assert np.max(np.abs(b - np.asarray(system.cderi))) < 1e-10

    coords = np.asarray(system.grid_coords)
    pick = np.random.default_rng(0).choice(len(coords), 300, replace=False)
    for omega in (0.0, OMEGA):
        with mol.with_range_coulomb(omega):
            exact = mol.intor("int1e_grids", grids=coords[pick])  # (npoint, nao, nao)
        fitted = np.einsum("gR,Rkl->gkl", np.asarray(ops.coulomb_operator(omega))[pick], b)
        err = np.abs(fitted - exact)
        assert err.max() < 1e-2 * np.abs(exact).max() and np.sqrt(np.mean(err**2)) < 1e-3, (omega, err.max())
    # raw PySCF overlaps with unit-charge Gaussians, from the operator by undoing L⁻¹
    bexp = LADDER[2]
    fake = gto.fakemol_for_charges(coords[pick], expnt=bexp)
    raw = gto.intor_cross("int1e_ovlp", auxmol, fake)
    mine = np.asarray(ops.gaussian_operators([bexp])[0])[pick] @ low.T
    assert np.max(np.abs(mine - raw.T)) < 1e-10 * np.abs(raw).max()
    x = dft.numint.eval_ao(auxmol, coords)
    proj = x @ np.linalg.solve(auxmol.intor("int1e_ovlp"), low)
    assert np.max(np.abs(np.asarray(ops.projection[0]) - proj)) < 1e-8 * np.abs(proj).max()
    # the fitted density smoothed with the ladder's Gaussians vs the exact 3-centre overlaps
    ints = np.einsum("klg,kl->g", _int3c1e(mol, fake), 2 * dm)
    fit = np.asarray(ops.gaussian_operators([bexp])[0])[pick] @ np.einsum("Rkl,kl->R", b, 2 * dm)
    assert np.max(np.abs(fit - ints)) < 1e-3 * np.abs(ints).max()


def _int3c1e(mol, fakemol):
    from pyscf import df

    return df.incore.aux_e2(mol, fakemol, intor="int3c1e", aosym="s1").reshape(mol.nao, mol.nao, -1)


def test_local_exchange_integrates_to_exchange_energies():
    """∫ e_x^HF(r) d³r equals the density-fitted E_x^HF (nlxc's and PySCF's) up to the grid
    quadrature (grid level 3); the long-range one PySCF's exact E_x(ω) up to the fitting error;
    pointwise, the density-fitted e_x^HF(r) is close to PySCF's exact (non-DF) one."""
    from pyscf import dft, scf

    mol = _mole(H2O)
    grids = _grids(mol, level=3)
    system = nlxc.System.from_pyscf(mol, grids=grids, restricted=False,
                                    grid_operators=nlxc.GridOperatorSpec(omegas=(0.0, OMEGA)))
    mf = scf.UHF(mol).density_fit()
    mf.kernel()
    dm = np.asarray(mf.make_rdm1())  # (2, nao, nao)
    e = np.asarray(jax.jit(local_exact_exchange, static_argnums=2)(jnp.asarray(dm), system, (0.0, OMEGA)))
    w = np.asarray(system.grid_weights)
    grid_energy = e.sum(axis=1) @ w

    vk_df = mf.with_df.get_jk(dm, hermi=1, with_j=False)[1]
    ex_df = -0.5 * np.einsum("sij,sji->", vk_df, dm)
    assert grid_energy[0] == pytest.approx(ex_df, rel=2e-8)  # measured 4e-9
    assert grid_energy[0] == pytest.approx(float(exact_exchange_energy(system.cderi, jnp.asarray(dm))), rel=2e-8)
    vk_lr = scf.hf.get_jk(mol, dm, hermi=1, with_j=False, omega=OMEGA)[1]
    ex_lr = -0.5 * np.einsum("sij,sji->", vk_lr, dm)
    # the long-range operator acts on the Coulomb-metric fit: a first-order fitting error,
    # measured 7.9e-5 relative (PySCF's own long-range-metric DF agrees with exact to 1e-8)
    assert grid_energy[1] == pytest.approx(ex_lr, rel=2e-4)

    # pointwise against PySCF's exact (non-DF) potentials of the pair densities
    coords = np.asarray(system.grid_coords)
    ao = dft.numint.eval_ao(mol, coords)
    psi = np.einsum("gm,smk->sgk", ao, dm)
    rho = np.einsum("sgk,gk->sg", psi, ao)
    pick = np.flatnonzero((rho[0] > 1e-2))
    pick = pick[np.random.default_rng(1).choice(len(pick), 300, replace=False)]
    for i, omega in enumerate((0.0, OMEGA)):
        with mol.with_range_coulomb(omega):
            v = mol.intor("int1e_grids", grids=coords[pick])
        exact = -0.5 * np.einsum("sgk,sgl,gkl->sg", psi[:, pick], psi[:, pick], v)
        rel = np.abs(e[i][:, pick] - exact) / np.abs(exact)
        assert np.median(rel) < 1e-3 and rel.max() < 1e-2, (omega, np.median(rel), rel.max())  # measured 2e-4, 1e-3
        assert np.all(exact <= 0.0)


def test_uniform_gas_limits():
    """Uniform-gas inputs give Slater exchange and PW92 correlation exactly for any weights;
    the long-range fraction matches libxc's LDA_X_ERF; F_x stays in (0, 1.804)."""
    from pyscf.dft import libxc

    rho1 = jnp.logspace(-4, 3, 50)
    e_sr = libxc.eval_xc("LDA_X_ERF", np.asarray(2 * rho1), spin=0, omega=OMEGA)[0]
    e_x = libxc.eval_xc("LDA_X", np.asarray(2 * rho1), spin=0)[0]
    np.testing.assert_allclose(np.asarray(uniform_gas_long_range_fraction(rho1, OMEGA)), 1 - e_sr / e_x,
                               rtol=1e-10, atol=1e-12)
    # a uniform gas of spin densities (ρα, ρβ): σ = 0, τσ = τ_UEG(ρσ), e_x^HF(ω) = λ e_x^LDA
    rho = jnp.stack([rho1, 0.3 * rho1])
    tau = 0.3 * (6 * jnp.pi**2) ** (2 / 3) * rho ** (5 / 3)
    sigma = jnp.zeros((3, rho.shape[1]))
    lda = -0.75 * (6 / jnp.pi) ** (1 / 3) * rho ** (4 / 3)
    model = _local_hybrid(final_scale=30.0)
    densities = eqx.filter_jit(model.energy_densities)
    e_x, e_c = densities(rho, sigma, tau, lda, uniform_gas_long_range_fraction(rho, OMEGA) * lda)
    np.testing.assert_allclose(np.asarray(e_x), np.asarray(lda.sum(0)), rtol=1e-12)
    pw = nlxc.xc.PW92Correlation.modified().energy_density(rho, sigma, tau)
    np.testing.assert_allclose(np.asarray(e_c), np.asarray(pw), rtol=1e-12)
    # the outputs do move away from the uniform gas for other inputs (the weights are large)
    e_x2, _ = densities(rho, sigma + 0.01, tau, lda, lda)
    assert np.max(np.abs(np.asarray(e_x2 - e_x) / lda.sum(0))) > 1e-2

    from nlxc.xc.features import SpinChannelFeatures

    cider = _cider(final_scale=30.0)
    ch = SpinChannelFeatures.from_arrays(rho, sigma, tau)
    enhancement = eqx.filter_jit(cider.enhancement_factor)
    f = enhancement(ch, jnp.ones((len(SCALES),) + rho.shape))
    np.testing.assert_allclose(np.asarray(f), 1.0, rtol=1e-12)
    g = jr.uniform(jr.key(2), (len(SCALES),) + rho.shape, minval=0.0, maxval=5.0)
    ch2 = SpinChannelFeatures.from_arrays(rho, jnp.stack([rho[0], 0 * rho[0], rho[1]]) ** 2, tau)
    f2 = np.asarray(enhancement(ch2, g))
    assert f2.min() > 0 and f2.max() < 1.804 and np.ptp(f2) > 0.1


def test_cider_descriptors(water):
    """G̃ against the exact Gaussian convolution of the density at a = c k_F² (PySCF 3-centre
    overlaps); the two density fits agree."""
    from pyscf import gto

    mol, system, dm = water
    p = jnp.asarray(np.stack([dm, dm]))
    density = nlxc.Density.from_density_matrix(p, system)
    descriptors = eqx.filter_jit(gaussian_density_descriptors)
    got = np.asarray(descriptors(density, p, system, scales=SCALES, exponents=LADDER))
    coulomb = np.asarray(descriptors(density, p, system, scales=SCALES, exponents=LADDER, fit="coulomb"))
    assert got.shape == (len(SCALES), 2, system.ngrid) and np.array_equal(got[:, 0], got[:, 1])
    n = 2 * np.asarray(density.rho[0])
    coords = np.asarray(system.grid_coords)
    pick = np.flatnonzero(n > 1e-2)
    pick = pick[np.random.default_rng(2).choice(len(pick), 40, replace=False)]
    kf2 = (3 * np.pi**2 * n[pick]) ** (2 / 3)
    for i, c in enumerate(SCALES):
        a = np.clip(c * kf2, LADDER[0], LADDER[-1])
        exact = np.array([
            np.einsum("kl,kl->", _int3c1e(mol, gto.fakemol_for_charges(coords[[g]], expnt=ai))[..., 0], 2 * dm)
            for g, ai in zip(pick, a)
        ]) / n[pick]
        rel = np.abs(got[i, 0, pick] - exact) / exact
        # interpolation in log a (~0.1 %) and the projection on a level-0 grid (~0.4 %)
        assert np.median(rel) < 1e-2 and rel.max() < 5e-2, (c, np.median(rel), rel.max())
        assert np.median(np.abs(coulomb[i, 0, pick] - got[i, 0, pick]) / exact) < 1e-2
    assert np.all(np.isfinite(got))
    with pytest.raises(nlxc.InputError, match="exponents"):
        gaussian_density_descriptors(density, p, system)  # the default ladder was not built


def test_models_size_consistency():
    """H2O, N2 and H2O···N2 at 40 Bohr with their initial densities: E(AB) = E(A) + E(B) to
    1e-8 Hartree for both models (networks with large weights, far from their baselines)."""
    far = 40.0 * 0.52917721092
    dimer = H2O + [(s, (p[0] + far, p[1], p[2])) for s, p in N2]
    fragments = [nlxc.System.from_pyscf(_mole(g), grid_level=GRID_LEVEL, grid_operators=SPEC) for g in (H2O, N2, dimer)]
    lh, cider = _local_hybrid(final_scale=1.0), _cider(final_scale=1.0)

    @jax.jit
    def energies(system):
        p = system.initial_density_matrix
        d = nlxc.Density.from_density_matrix(p, system)
        return jnp.stack([lh(d, p, system), cider(d, p, system),  # the models
                          nlxc.xc.PBE0()(d, p, system), PBEExchange()(d, p, system)])  # their baselines

    a, b, ab = (np.asarray(energies(s)) for s in fragments)
    assert np.all(np.abs(a[:2] - a[2:]) > 1e-3) and np.all(np.abs(b[:2] - b[2:]) > 1e-3)  # not trivial
    np.testing.assert_array_less(np.abs(ab - (a + b))[:2], 1e-8)


def test_padding_stacking_and_errors(water):
    mol, system, dm = water
    p = system.initial_density_matrix
    models = [_local_hybrid(final_scale=1.0), _cider(final_scale=1.0)]
    padded = nlxc.pad_system(system, nao=system.nao + 2, naux=system.naux + 5, ngrid=system.ngrid + 11)
    pp = padded.initial_density_matrix
    assert padded.grid_operators.coulomb.shape == (2, system.ngrid + 11, system.naux + 5)
    model = models[0] + models[1]

    @eqx.filter_jit
    def energy(f, q, s):
        return f(nlxc.Density.from_density_matrix(q, s), q, s)

    e = energy(model, p, system)
    e_pad, g_pad = eqx.filter_jit(jax.value_and_grad(energy, argnums=1))(model, pp, padded)
    assert float(e_pad) == pytest.approx(float(e), abs=1e-10)
    assert bool(jnp.all(jnp.isfinite(g_pad)))
    host = nlxc.pad_system(system, ngrid=system.ngrid + 3, host=True)
    assert isinstance(host.grid_operators.gaussian, np.ndarray)

    plain = nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL)
    with pytest.raises(ValueError, match="grid operators"):
        nlxc.batch.stack([system, plain])
    with pytest.raises(nlxc.InputError, match="grid operators"):
        models[0](nlxc.Density.from_density_matrix(p, plain), p, plain)
    with pytest.raises(nlxc.InputError, match="ω"):
        nlxc.GridOperatorSpec(omegas=(-0.1,))
    with pytest.raises(nlxc.InputError, match="exponent"):
        nlxc.GridOperatorSpec(exponents=(0.0,))
    with pytest.raises(nlxc.InputError, match="GridOperatorSpec"):
        nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL, grid_operators={"omegas": (0.0,)})
    with pytest.raises(nlxc.InputError, match="increasing"):
        NonlocalEnhancedExchange(exponents=(1.0,), key=jr.key(0))
    with pytest.raises(nlxc.InputError, match="fit"):
        NonlocalEnhancedExchange(fit="overlap", key=jr.key(0))
    with pytest.raises(nlxc.InputError, match="hf_fraction"):
        LocalHybrid(hf_fraction=1.5, key=jr.key(0))
    # the cderi check catches a DF tensor from another auxiliary basis
    from nlxc.grid_operators import build_grid_operators

    with pytest.raises(nlxc.InputError):
        build_grid_operators(mol, np.zeros((2, 3)), nlxc.GridOperatorSpec(omegas=(0.0,)), auxbasis="def2-universal-jkfit",
                             cderi=system.cderi)


def test_ill_conditioned_metric_follows_pyscf():
    """A (near-)linearly dependent auxiliary basis: Cholesky fails, PySCF drops eigenvectors of
    the metric, and the grid operators follow it (same reduced naux; fitted potentials still
    close to PySCF's exact ones)."""
    from pyscf import df

    mol = _mole([("H", (0.0, 0.0, 0.0)), ("H", (0.0, 0.0, 0.74))])
    aux = {"H": [[0, [2.0, 1.0]], [0, [2.0 * (1 + 1e-9), 1.0]], [0, [0.5, 1.0]], [1, [1.0, 1.0]]]}
    auxmol = df.addons.make_auxmol(mol, aux)
    with pytest.raises(np.linalg.LinAlgError):
        scipy.linalg.cholesky(auxmol.intor("int2c2e", hermi=1), lower=True)
    system = nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL, auxbasis=aux,
                                    grid_operators=nlxc.GridOperatorSpec(omegas=(0.0,)))
    assert system.grid_operators.coulomb.shape == (1, system.ngrid, system.naux) and system.naux < auxmol.nao
    coords = np.asarray(system.grid_coords)[::25]
    exact = mol.intor("int1e_grids", grids=coords)
    fitted = np.einsum("gR,Rkl->gkl", np.asarray(system.grid_operators.coulomb[0])[::25], np.asarray(system.cderi))
    assert np.abs(fitted - exact).max() < 0.1 * np.abs(exact).max()
