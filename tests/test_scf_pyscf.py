"""Total energies of nlxc's SCF against PySCF's density-fitted RKS/UKS (and RHF/UHF).

Same functional, basis (def2-SVP), grid (PySCF level `GRID_LEVEL`) and auxiliary basis
(PySCF's JK-fit basis from `pyscf.df.make_auxbasis`, which nlxc's System uses by default; note
that PySCF's own `density_fit()` would pick a J-fit basis for pure functionals, so the test
passes the auxiliary basis explicitly). The references are computed by PySCF in the test.
Acceptance: |ΔE| ≤ 1e-7 Ha, except NO (below).

Every case runs nlxc's default solver (`nlxc.solve(functional, system)`: CDIIS with the
Newton fallback, default tolerance, default minao guess, no level shift), with no
per-molecule settings.

Degenerate open shells (NO's half-filled π* pair, the p shells of C and O, the OH π hole) have
a nearly free rotation of the broken-symmetry orbital; on a finite grid the energy varies along
it by up to ~1e-5 Ha, so two SCFs run by different algorithms (or on different CPUs, whose
rounding differs) can settle at different orientations, each self-consistent: measured, nlxc
1.0e-5 Ha below PySCF for NO/r2SCAN and 5.0e-6 below for C/r2SCAN on one CPU, 1.5e-6 Ha above
for C/r2SCAN on another. For those the test requires nlxc's state to be a PySCF solution:
PySCF's energy of nlxc's density matrix equals nlxc's energy (1e-7 Ha) and PySCF's Fock matrix
commutes with it (F P S − S P F ≈ 0), and its energy to be within `DEGENERATE_SPREAD` (2e-5 Ha)
of PySCF's. Since the solve's stability analysis (`nlxc.scf.StabilityAnalysis`, default for
unrestricted Systems) rotates a saddle point it detects downhill, nlxc's state is normally a local
minimum; but the
r2SCAN energy of these atoms on a finite grid has several local minima a few µHa apart (F/r2SCAN
in def2-SVP, grid level 3: nlxc's and PySCF's states 3.1e-6 Ha apart, both stable by both
codes' analyses; docs/scf.md), so the spread stays.

NO with SVWN has no aufbau solution near the energy minimum: PySCF's second-order solver
(`mf.newton()`) converges to a minimum whose lowest α virtual orbital lies below the highest
occupied one, and PySCF's DIIS does not converge. There the test checks that nlxc converges to
that same minimum (1e-6 Ha) and says that it is not aufbau (`SCFResult.aufbau`).

To keep compile time down, molecules of similar size are padded to one shape per bucket (see
`nlxc.pad_system`), so each functional compiles once per bucket; benzene runs unpadded, with
PBE, B3LYP and r2SCAN (the functionals the docs claim for it).
"""

import functools

import numpy as np
import optimistix as optx
import pytest
from conftest import GRID_LEVEL, mole, system
from pyscf import df, dft, scf

import nlxc
from nlxc.scf import solve

DEGENERATE_OPEN_SHELLS = {"no", "OH", "C", "O"}  # see the module docstring
DEGENERATE_SPREAD = 2e-5  # Ha: the energy range of the orientations of a degenerate open shell
NO_AUFBAU_SOLUTION = {("no", "svwn")}
FUNCTIONALS = ["svwn", "pbe", "blyp", "b3lyp", "pbe0", "r2scan", "hf"]
CLOSED = ["h2o", "nh3", "ch4", "n2", "c6h6"]
OPEN = ["o2", "ch2", "no"]
BUCKETS = [["h2o", "nh3", "ch4", "n2"], ["c6h6"], ["o2", "ch2", "no"]]


@functools.lru_cache(maxsize=None)
def bucketed_system(name):
    bucket = next(b for b in BUCKETS if name in b)
    if len(bucket) == 1:
        return system(name)
    padded = nlxc.pad_to_common_shape([system(n) for n in bucket])
    return padded[bucket.index(name)]


@functools.lru_cache(maxsize=None)
def pyscf_energy(name, xc):
    mol = mole(name)
    if xc == "hf":
        mf = scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol)
    else:
        mf = dft.RKS(mol, xc=xc) if mol.spin == 0 else dft.UKS(mol, xc=xc)
        mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol = 1e-11
    mf.max_cycle = 200
    if (name, xc) in NO_AUFBAU_SOLUTION:
        return mf
    energy = mf.kernel()
    assert mf.converged, f"PySCF did not converge for {name}/{xc}"
    return energy, mf


def assert_matches_pyscf(name, result, reference, mf, nao):
    """nlxc's energy equals PySCF's (1e-7 Ha), or, for a degenerate open shell, nlxc's density
    matrix is a PySCF solution within `DEGENERATE_SPREAD` of PySCF's energy (module docstring)."""
    energy = float(result.energy)
    if name not in DEGENERATE_OPEN_SHELLS:
        assert abs(energy - reference) <= 1e-7, (energy, reference)
        return
    assert abs(energy - reference) <= DEGENERATE_SPREAD, (energy, reference)
    dm = np.asarray(result.density_matrix)[:, :nao, :nao]
    at_nlxc_density = mf.energy_tot(dm=dm)
    assert abs(at_nlxc_density - energy) <= 1e-7, (at_nlxc_density, energy)
    f = mf.get_fock(dm=dm)
    s_ao = mf.get_ovlp()
    for k in range(2):
        assert np.abs(f[k] @ dm[k] @ s_ao - s_ao @ dm[k] @ f[k]).max() < 1e-5


# The NO cases that CDIIS hands over to the Newton fallback (35-70 Newton steps, 80-170 s each on
# 2 cores) run in the slow set (`python -m pytest -q -m slow`, which .ci/run runs too); NO with
# r2SCAN and HF, and NO/PBE from the default guess in test_scf.py, stay in the default suite.
SLOW_CASES = {("no", "svwn"), ("no", "pbe"), ("no", "blyp"), ("no", "b3lyp"), ("no", "pbe0")}

# Benzene, the largest molecule, with the functionals the docs claim for it (every functional
# is checked on the seven others; `benchmarks/scf.py --xc ...` compares benzene for any).
LARGE_FUNCTIONALS = {"c6h6": ["pbe", "b3lyp", "r2scan"]}


def _cases():
    # one xdist group per bucket: the molecules of a bucket share compiled programs
    for name in CLOSED + OPEN:
        bucket = next(i for i, b in enumerate(BUCKETS) if name in b)
        for xc in LARGE_FUNCTIONALS.get(name, FUNCTIONALS):
            group = f"scf-bucket{bucket}" + ("-hybrid" if xc in ("b3lyp", "pbe0", "hf") else "")
            marks = [pytest.mark.xdist_group(group)] + ([pytest.mark.slow] if (name, xc) in SLOW_CASES else [])
            yield pytest.param(name, xc, id=f"{name}-{xc}", marks=marks)


@pytest.mark.parametrize("name, xc", list(_cases()))
def test_total_energy_matches_pyscf(name, xc):
    sys = bucketed_system(name)
    nao = system(name).nao
    result = solve(nlxc.get_functional(xc), sys)
    if (name, xc) in NO_AUFBAU_SOLUTION:
        # PySCF's second-order solver finds the minimum, and it is not aufbau
        newton = pyscf_energy(name, xc).newton()
        newton.conv_tol, newton.max_cycle, newton.verbose = 1e-10, 200, 0
        minimum = newton.kernel()
        assert newton.converged
        e_alpha, occ_alpha = newton.mo_energy[0], newton.mo_occ[0]
        assert e_alpha[occ_alpha > 0].max() > e_alpha[occ_alpha == 0].min()
        # nlxc converges to that minimum (the Newton fallback) and says it is not aufbau
        assert bool(result.converged), (int(result.n_iterations), optx.RESULTS[result.result])
        assert not bool(result.aufbau)
        assert abs(float(result.energy) - minimum) <= 1e-6, (float(result.energy), minimum)
        return
    reference, mf = pyscf_energy(name, xc)
    assert bool(result.converged), f"{name}/{xc} did not converge"
    assert bool(result.aufbau), f"{name}/{xc} is not aufbau"
    assert_matches_pyscf(name, result, reference, mf, nao)
    # the components add up, and the density matrix has the right electron counts
    c = result.components
    assert float(c.total) == pytest.approx(float(result.energy), abs=1e-12)
    s = np.asarray(system(name).overlap)
    p = np.asarray(result.density_matrix)
    assert np.all(p[:, nao:, :] == 0) and np.all(p[:, :, nao:] == 0)  # padding stays empty
    p = p[:, :nao, :nao]
    n = np.asarray(system(name).n_electrons)
    assert np.trace(p[0] @ s) == pytest.approx(n[0], abs=1e-8)
    assert np.trace(p[1] @ s) == pytest.approx(n[1], abs=1e-8)


# A G2-1 subset that the default solver once failed or needed many iterations on: radicals with
# degenerate or soft open shells and open-shell atoms (the whole set with four functionals is
# `benchmarks/g2_convergence.py`). Default everything on both sides, grid level GRID_LEVEL.
G2_SUBSET = [("OH", "pbe"), ("HCO", "b3lyp"), ("C", "r2scan"), ("O", "lda")]


@pytest.mark.parametrize("name, xc", G2_SUBSET, ids=[f"{n}-{x}" for n, x in G2_SUBSET])
@pytest.mark.xdist_group("scf-g2-subset")
def test_g2_radicals_and_atoms_converge_by_default_to_pyscf(name, xc):
    molecule = nlxc.data.g2("g2_1").molecule(name)
    mol = molecule.to_mole("def2-svp")
    result = solve(nlxc.get_functional(xc), nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL))
    assert bool(result.converged), (name, xc, int(result.n_iterations))
    mf = dft.UKS(mol, xc=xc) if mol.spin else dft.RKS(mol, xc=xc)
    mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol, mf.max_cycle, mf.verbose = 1e-10, 200, 0
    reference = mf.kernel()
    assert mf.converged
    assert_matches_pyscf(name, result, reference, mf, mol.nao)


@pytest.mark.slow
@pytest.mark.xdist_group("scf-g2-subset")
def test_sulfur_atom_with_pbe_converges_along_its_soft_3p_rotations():
    """S (triplet) with PBE in def2-SVP at grid level 3, as in `benchmarks/g2_convergence.py`:
    CDIIS stagnates and the Newton fallback must converge along the soft rotations of the β 3p
    hole, whose last steps lower the energy by less than its rounding noise (a regression: the
    fallback once stopped there by stagnation, 3.4e-7 from convergence, at PySCF's energy)."""
    mol = nlxc.data.g2("g2_1").molecule("S").to_mole("def2-svp")
    result = solve(nlxc.get_functional("pbe"), nlxc.System.from_pyscf(mol, grid_level=3))
    assert bool(result.converged), int(result.n_iterations)
    mf = dft.UKS(mol, xc="pbe")
    mf.grids.level = 3
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol, mf.max_cycle, mf.verbose = 1e-10, 200, 0
    reference = mf.kernel()
    assert mf.converged
    assert_matches_pyscf("S", result, reference, mf, mol.nao)
