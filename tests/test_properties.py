"""`nlxc.dipole_moment` against PySCF's `dip_moment`.

Both sides about the same origin (PySCF's `dip_moment` takes the dipole integrals about (0, 0, 0),
nlxc's `System.dipole_integrals` are about the origin of the coordinates), in atomic units
(e·Bohr; PySCF's `unit="AU"`, whose default is Debye). Two checks:

- the property code alone: nlxc's dipole of PySCF's own converged density matrix against PySCF's
  dipole of that same density matrix (1e-10 a.u.; only the integrals and the contraction differ);
- through the SCF: nlxc's converged PBE density against PySCF's density-fitted PBE with the same
  basis (def2-SVP), grid (level 1) and auxiliary basis (`pyscf.df.make_auxbasis(mol)`, passed
  explicitly as in `test_scf_pyscf.py`); 1e-5 a.u. (both SCFs converged to ~1e-9).

Water (closed shell, RKS) and triplet CH2 (UKS). nlxc's SCF runs on the padded Systems of
`test_scf_pyscf.py` with its solver (`DIIS(atol=1e-9)`, 200 steps) and in its xdist groups, so in
a full run the compiled PBE programs of that module are reused and the cost here is the two
PySCF SCFs (measured 4 s and 6.5 s after test_scf_pyscf.py's PBE cases); alone, this module
compiles one SCF per molecule (measured 65 s cold; 2 shared CPU cores, load average ~5).
"""

import numpy as np
import pytest
from conftest import GRID_LEVEL, mole, system
from pyscf import df, dft
from pyscf.data import nist
from test_scf_pyscf import bucketed_system

import nlxc
from nlxc.scf import DIIS

# the xdist groups of test_scf_pyscf.py's PBE cases for these molecules (shared compiled programs)
CASES = [pytest.param("h2o", marks=pytest.mark.xdist_group("scf-bucket0"), id="h2o"),
         pytest.param("ch2", marks=pytest.mark.xdist_group("scf-bucket2"), id="ch2")]


def _pyscf_pbe(name):
    mol = mole(name)
    mf = (dft.RKS if mol.spin == 0 else dft.UKS)(mol, xc="pbe")
    mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol = 1e-11
    mf.conv_tol_grad = 1e-8
    mf.verbose = 0
    mf.kernel()
    assert mf.converged, f"PySCF did not converge for {name}"
    return mf


def _spin_blocks(dm):
    """PySCF's density matrix as nlxc's `(2, nao, nao)` (α, β) stack."""
    dm = np.asarray(dm)
    return np.stack([dm / 2, dm / 2]) if dm.ndim == 2 else dm


@pytest.mark.parametrize("name", CASES)
def test_dipole_moment_matches_pyscf(name):
    sys, mf = system(name), _pyscf_pbe(name)
    assert sys.restricted == (name == "h2o")
    dm = mf.make_rdm1()

    # property code alone: the same density matrix on both sides
    reference = np.asarray(mf.dip_moment(mf.mol, dm, unit="AU", verbose=0))
    ours = np.asarray(nlxc.dipole_moment(_spin_blocks(dm), sys))
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-10)
    # a.u., not Debye (the default unit of PySCF's dip_moment)
    debye = np.asarray(mf.dip_moment(mf.mol, dm, unit="Debye", verbose=0))
    np.testing.assert_allclose(ours * nist.AU2DEBYE, debye, rtol=0, atol=1e-9)
    # the molecules are polar: the comparison is not of two zeros
    assert np.linalg.norm(reference) > 0.1

    # through the SCF: nlxc's own PBE density (padded System: padded rows of P and of the dipole
    # integrals are zero)
    padded = bucketed_system(name)
    result = nlxc.solve(nlxc.get_functional("pbe"), padded, DIIS(atol=1e-9), max_steps=200)
    assert bool(result.converged)
    assert abs(float(result.energy) - mf.e_tot) < 1e-7  # the same fixed point
    ours = np.asarray(nlxc.dipole_moment(result.density_matrix, padded))
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)
