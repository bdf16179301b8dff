"""System construction from PySCF, XYZ and ASE; validation of user input."""

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import MOLECULES, mole, system
from pyscf import df, dft, scf

import nlxc
from nlxc import InputError, System, build_mole


def test_integrals_match_pyscf():
    mol = mole("h2o")
    s = system("h2o")
    np.testing.assert_allclose(s.overlap, mol.intor("int1e_ovlp"), atol=1e-14)
    np.testing.assert_allclose(s.core_hamiltonian, scf.hf.get_hcore(mol), atol=1e-12)
    x = np.asarray(s.orthogonalizer)
    np.testing.assert_allclose(x.T @ np.asarray(s.overlap) @ x, np.eye(s.nmo), atol=1e-10)
    # the DF tensor reproduces PySCF's Cholesky-decomposed ERIs with the JK-fit auxiliary basis
    with_df = df.DF(mol, auxbasis=df.make_auxbasis(mol))
    eri_pyscf = np.asarray(with_df.get_eri())  # DF-approximated (μν|λσ), in memory or on disk
    if eri_pyscf.ndim == 1:  # 8-fold packed
        from pyscf import ao2mo

        eri_pyscf = ao2mo.restore(4, eri_pyscf, mol.nao)
    b = np.asarray(s.cderi)
    tril = np.tril_indices(s.nao)
    eri_nlxc = np.einsum("Qp,Qq->pq", b[:, tril[0], tril[1]], b[:, tril[0], tril[1]])
    np.testing.assert_allclose(eri_nlxc, eri_pyscf, atol=1e-10)
    assert s.naux == with_df.get_naoaux()
    assert float(s.nuclear_repulsion) == pytest.approx(mol.energy_nuc(), abs=1e-12)
    assert np.asarray(s.n_electrons).tolist() == [5, 5]
    assert s.restricted


def test_grid_and_ao_match_pyscf():
    mol = mole("h2o")
    s = system("h2o")
    grids = dft.gen_grid.Grids(mol)
    grids.level = 1
    grids.build(with_non0tab=False)
    keep = grids.weights != 0
    np.testing.assert_allclose(s.grid_weights, grids.weights[keep])
    ao = dft.numint.eval_ao(mol, grids.coords[keep], deriv=1)
    # the screened blocks hold PySCF's values exactly; what they leave out is below the threshold
    stored = np.asarray(s.ao_values())
    np.testing.assert_array_equal(stored[stored != 0], ao[stored != 0])
    np.testing.assert_allclose(stored, ao, rtol=0, atol=nlxc.system.AO_SCREENING_THRESHOLD)
    # the grid integrates the minao guess density to the electron count (trace of P S)
    p = np.asarray(s.initial_density_matrix).sum(0)
    rho = np.einsum("gm,mn,gn->g", ao[0], p, ao[0])
    assert np.dot(rho, grids.weights[keep]) == pytest.approx(np.trace(p @ mol.intor("int1e_ovlp")), rel=1e-5)


def test_open_shell_system():
    s = system("o2")
    assert not s.restricted
    assert np.asarray(s.n_electrons).tolist() == [9, 7]


def test_blocked_ao_evaluation_is_exact():
    mol = mole("h2o")
    a = System.from_pyscf(mol, grid_level=0, block_size=997)
    b = System.from_pyscf(mol, grid_level=0, block_size=10**7)
    np.testing.assert_array_equal(a.ao_values(), b.ao_values())


def test_from_xyz_and_ase(tmp_path):
    import ase

    path = tmp_path / "w.xyz"
    path.write_text("3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n")
    a = System.from_xyz(path, "sto-3g", grid_level=0)
    atoms = ase.Atoms("OH2", positions=[(0, 0, 0.1173), (0, 0.7572, -0.4692), (0, -0.7572, -0.4692)])
    b = System.from_ase(atoms, "sto-3g", grid_level=0)
    np.testing.assert_allclose(a.core_hamiltonian, b.core_hamiltonian, atol=1e-12)
    np.testing.assert_allclose(a.atom_coords, b.atom_coords, atol=1e-12)
    assert a.atom_coords[0, 2] == pytest.approx(0.1173 / 0.52917721092, rel=1e-8)


def test_core_guess_trace():
    s = System.from_pyscf(mole("h2o"), grid_level=0, init_guess="core")
    p = np.asarray(s.initial_density_matrix)
    assert np.trace(p[0] @ np.asarray(s.overlap)) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "geometry, basis, charge, spin, message",
    [
        ([("Xx", (0, 0, 0))], "sto-3g", 0, 0, "unknown element"),
        ([("H", (0, 0, 0)), ("H", (0, 0, 0.05))], "sto-3g", 0, 0, "closer than 0.1"),
        ([("H", (0, 0, 0)), ("H", (0, 0, 0.74))], "sto-3g", 0, 1, "inconsistent"),
        ([("H", (0, 0, 0))], "sto-3g", 0, 0, "inconsistent"),
        ([("H", (0, 0, 0)), ("H", (0, 0, 0.74))], "sto-3g", 2, 0, "leaves 0 electrons"),
        ([("H", (0, 0, 0)), ("H", (0, 0, 0.74))], "no-such-basis", 0, 0, "unknown basis"),
        ([("H", (0, 0, float("nan")))], "sto-3g", 0, 1, "invalid coordinates"),
        ([], "sto-3g", 0, 0, "no atoms"),
    ],
)
def test_bad_input_is_one_line_error(geometry, basis, charge, spin, message):
    with pytest.raises(InputError, match=message) as info:
        build_mole(geometry, basis, charge=charge, spin=spin)
    assert "\n" not in str(info.value)


def test_restricted_open_shell_rejected():
    with pytest.raises(InputError, match="closed shell"):
        System.from_pyscf(mole("o2"), restricted=True, grid_level=0)
