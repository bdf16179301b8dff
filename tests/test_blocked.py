"""Blocked, screened grid work (issue 14) against dense evaluation.

The System stores the AO values by blocks of grid points, each block with only the basis
functions non-negligible on it, and the density features are computed block by block. The
references here are dense: plain einsums over all AO values on the whole grid, which PySCF's
`eval_ao` gives in the test (independent of nlxc's storage). Energies and Fock matrices
(∂E_xc/∂P by reverse mode) must agree to 1e-10 Hartree.
"""

import functools

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from conftest import mole, system
from pyscf import dft, gto

import nlxc
from nlxc.models import LocalHybrid
from nlxc.system import AO_SCREENING_THRESHOLD, BlockLayout

TOL = 1e-10


@functools.lru_cache(maxsize=None)
def _dense_ao(mol, coords_bytes, n):
    coords = np.frombuffer(coords_bytes).reshape(n, 3)
    return jnp.asarray(dft.numint.eval_ao(mol, coords, deriv=1))


def dense_ao(mol, s):
    coords = np.ascontiguousarray(np.asarray(s.grid_coords))
    return _dense_ao(mol, coords.tobytes(), len(coords))


def dense_density(ao, p):
    """ρσ, ∇ρσ, σ, τσ from all AO values `(4, ngrid, nao)` and Pσ `(2, nao, nao)` (libxc's τ with ½)."""
    rho = jnp.einsum("gm,smn,gn->sg", ao[0], p, ao[0])
    gradient = 2.0 * jnp.einsum("xgm,smn,gn->sxg", ao[1:4], p, ao[0])
    tau = 0.5 * jnp.einsum("xgm,smn,xgn->sg", ao[1:4], p, ao[1:4])
    sigma = jnp.stack([jnp.einsum("xg,xg->g", gradient[a], gradient[b]) for a, b in ((0, 0), (0, 1), (1, 1))])
    return nlxc.Density(rho=rho, gradient=gradient, sigma=sigma, tau=tau)


def _density_matrices(s, restricted):
    """The System's guess; unrestricted: α and β made different by a symmetric perturbation."""
    p = np.asarray(s.initial_density_matrix)
    if restricted:
        return jnp.asarray(p)
    rng = np.random.default_rng(7)
    d = 0.02 * rng.standard_normal(p.shape)
    return jnp.asarray(p + d + np.swapaxes(d, -1, -2))


def _energy_and_fock(functional, s, p, ao=None):
    """E_xc and ∂E_xc/∂P (symmetrised) with blocked features (`ao=None`) or dense ones from `ao`."""
    def exc(p):
        density = nlxc.Density.from_density_matrix(p, s) if ao is None else dense_density(ao, p)
        return functional(density, p, s)

    e, g = jax.jit(jax.value_and_grad(exc))(p)
    return float(e), np.asarray(0.5 * (g + jnp.swapaxes(g, -1, -2)))


def _check_against_dense(functional, mol, s, restricted):
    p = _density_matrices(s, restricted)
    if restricted:  # the dense reference sees Pα = Pβ, as the blocked path does
        p = jnp.stack([p.mean(0), p.mean(0)])
    e_blocked, f_blocked = _energy_and_fock(functional, s, p)
    e_dense, f_dense = _energy_and_fock(functional, s, p, dense_ao(mol, s))
    assert abs(e_blocked - e_dense) < TOL, (e_blocked, e_dense)
    np.testing.assert_allclose(f_blocked, f_dense, rtol=0, atol=TOL)


SHELLS = {"restricted": ("h2o", True), "unrestricted": ("ch2", False)}


@pytest.mark.parametrize(("name", "shell"), [("pbe", "restricted"), ("pbe", "unrestricted"),
                                           ("b3lyp", "restricted"), ("b3lyp", "unrestricted"),
                                           ("r2scan", "restricted")])  # τ too
def test_semilocal_and_hybrid_match_dense(name, shell):
    molecule, restricted = SHELLS[shell]
    s = system(molecule)
    assert s.restricted == restricted
    _check_against_dense(nlxc.get_functional(name), mole(molecule), s, restricted)


@functools.lru_cache(maxsize=None)
def _local_hybrid_system(molecule):
    model = LocalHybrid(omega=0.4, key=jr.key(0))
    return model, nlxc.System.from_pyscf(mole(molecule), grid_level=1, grid_operators=model.required_grid_operators)


@pytest.mark.parametrize("shell", ["restricted", pytest.param("unrestricted", marks=pytest.mark.slow)])  # ~45 s each
def test_nonlocal_model_matches_dense(shell):
    """The DM21-like local hybrid: blocked density features and blocked orbital values (its local
    exact exchange) against dense features; the orbital values themselves against PySCF's."""
    molecule, restricted = SHELLS[shell]
    model, s = _local_hybrid_system(molecule)
    _check_against_dense(model, mole(molecule), s, restricted)
    ao = np.asarray(dense_ao(mole(molecule), s))
    p = np.asarray(_density_matrices(s, restricted))
    # screened-out functions (|φ| ≤ threshold on the block) change ψ_k by at most threshold · Σ_μ |P_μk|
    bound = AO_SCREENING_THRESHOLD * np.abs(p).sum(axis=-2).max() + 1e-14
    np.testing.assert_allclose(np.asarray(s.orbital_values(jnp.asarray(p))),
                               np.einsum("gm,smk->sgk", ao[0], p), rtol=0, atol=bound)
    np.testing.assert_allclose(np.asarray(s.density_values(jnp.asarray(p[0]))),
                               np.einsum("gm,mn,gn->g", ao[0], p[0], ao[0]), rtol=0,
                               atol=2 * AO_SCREENING_THRESHOLD * (np.abs(p[0]) @ np.abs(ao[0]).T).max() + 1e-14)


def test_stored_blocks_are_pyscf_values():
    """Every stored value is PySCF's; the dense array rebuilt from the blocks differs from PySCF's
    only by values under the screening threshold."""
    s = system("ch2")
    ao = np.asarray(dense_ao(mole("ch2"), s))
    stored = np.asarray(s.ao_values())
    kept = stored != 0
    np.testing.assert_array_equal(stored[kept], ao[kept])
    assert np.abs(ao[~kept]).max(initial=0.0) <= AO_SCREENING_THRESHOLD


@functools.lru_cache(maxsize=None)
def _two_h2():
    """Two H2 molecules 10 Å apart (def2-SVP, grid level 1)."""
    mol = gto.M(atom="H 0 0 0; H 0 0 0.74; H 0 0 10.0; H 0 0 10.74", basis="def2-svp", verbose=0)
    return mol, nlxc.System.from_pyscf(mol, grid_level=1)


def test_screening_drops_far_functions():
    mol, s = _two_h2()
    nao = mol.nao
    first = np.zeros(nao, dtype=bool)  # the functions of the first H2 (atoms 0 and 1)
    for _, _, start, stop in mol.aoslice_by_atom()[:2]:
        first[start:stop] = True
    assert first.shape == (nao,) and first.sum() == nao // 2
    coords = np.asarray(s.grid_coords)
    centre = np.array([[0.0, 0.0, 0.37], [0.0, 0.0, 10.37]]) * nlxc.constants.ANGSTROM_TO_BOHR
    block = s.ao_blocks.block_size
    checked = listed_total = 0
    for values, indices, positions in zip(s.ao_blocks.values, s.ao_blocks.indices, s.ao_blocks.positions):
        values, indices = np.asarray(values), np.asarray(indices)
        for v, idx, b in zip(values, indices, np.asarray(positions)):
            listed = idx[np.abs(v).max(axis=(0, 1)) > 0]  # the block's functions (padding excluded)
            listed_total += len(listed)
            points = coords[b * block : (b + 1) * block]
            d = np.linalg.norm(points[:, None] - centre[None], axis=-1)  # (points, 2)
            for mine in (0, 1):
                if np.all(d[:, mine] < 3.0):  # within 3 Bohr of one H2, 17 Bohr from the other
                    own = first[listed] if mine == 0 else ~first[listed]
                    assert own.all(), f"block {b} lists functions of the far molecule"
                    checked += 1
    assert checked > 10
    # so the layout has short lists (half the functions, padded to 12 of 20) and fewer in all
    assert min(size for size, _ in s.ao_blocks.layout.groups) <= 12
    assert listed_total < 0.9 * nao * len(range(0, s.ngrid, block))
    # and the blocked energy still matches the dense one
    _check_against_dense(nlxc.get_functional("pbe"), mol, s, True)


def test_padded_layouts_match():
    """Padding to a covering layout (zero blocks, longer AO lists, more grid points and AOs)
    changes no density feature."""
    a, b = system("h2o"), system("ch2")
    layout = BlockLayout.covering([a.ao_blocks.layout, b.ao_blocks.layout], max(a.nao, b.nao))
    padded = nlxc.pad_system(a, nao=a.nao + 3, ngrid=a.ngrid + 500, blocks=layout)
    assert padded.ao_blocks.layout == layout
    p = a.initial_density_matrix
    pp = jnp.pad(p, ((0, 0), (0, 3), (0, 3)))
    d0 = nlxc.Density.from_density_matrix(p, a)
    d1 = nlxc.Density.from_density_matrix(pp, padded)
    for x, y in zip((d0.rho, d0.gradient, d0.tau), (d1.rho, d1.gradient, d1.tau)):
        np.testing.assert_allclose(np.asarray(y[..., : a.ngrid]), np.asarray(x), rtol=0, atol=1e-14)
        assert not np.any(np.asarray(y[..., a.ngrid :]))
