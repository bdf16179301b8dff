"""nlxc functionals inside PySCF (`nlxc.interop.pyscf.KS`).

The energy of PySCF's SCF loop with an nlxc functional (`mf.kernel()`) is compared with
`nlxc.scf.solve` on the interop object's own System (same grid, auxiliary basis, initial guess),
both converged tightly (PySCF `conv_tol=1e-10`; nlxc CDIIS `atol=1e-9`, `SCFResult.converged`
checked), for a GGA (RKS), a hybrid on an open shell (B3LYP, UKS, triplet CH2) and a nonlocal
model (RKS). For PBE and B3LYP, PySCF's own density-fitted RKS/UKS with libxc on the same grid
level and auxiliary basis is an independent reference. Acceptance: |ΔE| ≤ 1e-7 Ha. Small work:
6-31G, grid level 1; all tests share compiled programs (one xdist group).
"""

import functools

import equinox as eqx
import jax
import numpy as np
import pytest
from conftest import MOLECULES
from pyscf import df, dft, gto, lib

import nlxc
from nlxc.interop.pyscf import KS, NlxcKS, required_grid_operators

pytestmark = pytest.mark.xdist_group("interop")

BASIS = "6-31g"
GRID_LEVEL = 1
TOLERANCE = 1e-7  # Hartree
PYSCF_CONV_TOL = 1e-10


@functools.lru_cache(maxsize=None)
def molecule(name):
    atom, charge, spin = MOLECULES[name]
    return gto.M(atom=atom, basis=BASIS, charge=charge, spin=spin, verbose=0)


@functools.lru_cache(maxsize=None)
def functional(name):
    if name == "pbe+model":
        model = nlxc.models.AtomCentredCorrection(key=jax.random.key(0), final_scale=1e-2)
        return nlxc.get_functional("pbe") + model
    return nlxc.get_functional(name)


@functools.lru_cache(maxsize=None)
def interop_run(name, xc):
    """(mf, energy returned by mf.kernel()) for PySCF's SCF with the nlxc functional."""
    mf = KS(molecule(name), functional(xc), grid_level=GRID_LEVEL)
    mf.conv_tol = PYSCF_CONV_TOL
    mf.max_cycle = 200
    energy = mf.kernel()
    assert mf.converged, f"PySCF with nlxc {xc} did not converge for {name}"
    return mf, energy


@functools.lru_cache(maxsize=None)
def nlxc_energy(name, xc):
    system = interop_run(name, xc)[0].system
    result = nlxc.solve(functional(xc), system, nlxc.scf.CDIIS(atol=1e-9), max_steps=200)
    assert bool(result.converged), f"nlxc.solve did not converge for {name}/{xc}"
    return float(result.energy)


def pyscf_libxc_energy(name, xc):
    """PySCF's own density-fitted KS with libxc: same grid level and (JK-fit) auxiliary basis."""
    mol = molecule(name)
    mf = dft.RKS(mol, xc=xc) if mol.spin == 0 else dft.UKS(mol, xc=xc)
    mf.grids.level = GRID_LEVEL
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.conv_tol = PYSCF_CONV_TOL
    with lib.with_omp_threads(1):  # tiny work: OpenMP threads would only spin
        energy = mf.kernel()
    assert mf.converged
    return energy


# Every case compiles two programs (nlxc.solve and the interop potential, ~6 s each on one core),
# so the hybrid and the open shell share one case.
CASES = [
    ("h2o", "pbe", True),  # semilocal, RKS
    ("ch2", "b3lyp", True),  # hybrid (exact exchange in E_xc) and open shell: triplet CH2, UKS
    ("h2o", "pbe+model", False),  # nonlocal model reading grid coordinates and nuclei
]


@pytest.mark.parametrize("name, xc, libxc", CASES, ids=[f"{n}-{x}" for n, x, _ in CASES])
def test_energy_matches_nlxc_solve(name, xc, libxc):
    mf, energy = interop_run(name, xc)
    reference = nlxc_energy(name, xc)
    print(f"{name}/{xc}: |E(interop) - E(nlxc.solve)| = {abs(energy - reference):.2e} Ha")
    assert abs(energy - reference) <= TOLERANCE, (energy, reference)
    if xc == "pbe+model":  # the model contributes (so ignoring it would fail the test)
        assert abs(energy - interop_run(name, "pbe")[1]) > 1e-5
    if libxc:
        other = pyscf_libxc_energy(name, xc)
        print(f"{name}/{xc}: |E(interop) - E(PySCF libxc)| = {abs(energy - other):.2e} Ha")
        assert abs(energy - other) <= TOLERANCE, (energy, other)


def test_pyscf_conveniences():
    mol = molecule("h2o")
    f = functional("pbe")
    before = jax.tree.map(np.asarray, eqx.filter(f, eqx.is_array))
    mf, energy = interop_run("h2o", "pbe")
    assert isinstance(mf, NlxcKS) and isinstance(mf, dft.rks.RKS) and mf.with_df is not None
    assert mf.functional is f
    assert bool(eqx.tree_equal(eqx.filter(f, eqx.is_array), before))  # not mutated
    assert energy == mf.e_tot
    nao = mol.nao_nr()
    assert mf.mo_energy.shape == (nao,) and mf.mo_coeff.shape == (nao, nao)
    dm = mf.make_rdm1()
    assert np.trace(dm @ mf.get_ovlp()) == pytest.approx(mol.nelectron, abs=1e-8)
    # the tagged potential: energy_elec reads ecoul/exc; vj is PySCF's DF Coulomb matrix
    veff = mf.get_veff(mol, dm)
    assert mf.energy_tot(dm, vhf=veff) == pytest.approx(energy, abs=1e-9)
    assert veff.vk is None
    np.testing.assert_allclose(veff.vj, mf.get_j(mol, dm), atol=1e-8)
    assert veff.ecoul == pytest.approx(0.5 * np.sum(dm * veff.vj), abs=1e-8)
    # a System given explicitly gives the same SCF (and PySCF's DF tensor becomes the System's)
    again = KS(mol, f, system=mf.system)
    again.conv_tol = PYSCF_CONV_TOL
    assert again.kernel() == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(again.get_j(mol, dm), veff.vj, atol=1e-10)
    # UKS on the closed shell gives the RKS energy
    uks = KS(mol, f, restricted=False, grid_level=GRID_LEVEL)
    assert isinstance(uks, dft.uks.UKS)
    potential = uks.get_veff(mol, np.stack([dm / 2, dm / 2]))
    assert potential.shape == (2, nao, nao)
    np.testing.assert_allclose(potential[0], veff, atol=1e-9)
    np.testing.assert_allclose(potential[1], veff, atol=1e-9)
    assert potential.exc == pytest.approx(veff.exc, abs=1e-10)
    # PySCF features that would evaluate mf.xc with libxc refuse
    with pytest.raises(NotImplementedError):
        mf.nuc_grad_method()
    with pytest.raises(NotImplementedError):
        mf.gen_response()


def local_hybrid():
    # only its static fields are read here: an abstract (eval_shape) model costs no compilation
    return eqx.filter_eval_shape(lambda key: nlxc.models.LocalHybrid(key=key), jax.random.key(0))


def test_required_grid_operators_are_collected():
    local = local_hybrid()
    functional = nlxc.get_functional("pbe") + 0.5 * local
    spec = required_grid_operators(functional)
    assert spec == local.required_grid_operators and spec.omegas
    assert required_grid_operators(nlxc.get_functional("b3lyp")) == nlxc.GridOperatorSpec()
    # KS builds its System with them
    mf = KS(molecule("h2o"), functional, grid_level=0)
    assert spec.covered_by(mf.system.grid_operators)


@pytest.mark.filterwarnings("ignore:Basis may be available")  # PySCF's hint for the unknown auxbasis
def test_bad_inputs_raise_input_error():
    h2o, ch2 = molecule("h2o"), molecule("ch2")
    pbe = functional("pbe")
    system = interop_run("h2o", "pbe")[0].system
    bad = [
        lambda: KS(h2o, "pbe"),  # a name, not a functional
        lambda: KS(h2o, None),
        lambda: KS(system, pbe),  # a System where the Mole goes
        lambda: KS(h2o, pbe, system=h2o),  # a Mole where the System goes
        lambda: KS(ch2, pbe, system=system),  # System of another molecule
        lambda: KS(gto.M(atom=MOLECULES["h2o"][0], basis="sto-3g", verbose=0), pbe, system=system),
        lambda: KS(ch2, pbe, restricted=True),  # RKS for a triplet
        lambda: KS(h2o, pbe, system=system, restricted=False),  # contradicts the System
        lambda: KS(h2o, pbe, system=system, grid_level=2),
        lambda: KS(h2o, pbe, grids=object()),
        lambda: KS(h2o, pbe + local_hybrid(), system=system),  # the System lacks grid operators
        lambda: KS(h2o, pbe, grid_level=12),
        lambda: KS(h2o, pbe, auxbasis="no-such-basis"),
        lambda: KS(h2o, pbe, system=system, auxbasis="def2-universal-jfit"),  # not the System's size
    ]
    for make in bad:
        with pytest.raises(nlxc.InputError) as err:
            make()
        assert "\n" not in str(err.value)
    mf = interop_run("h2o", "pbe")[0]
    nao = h2o.nao_nr()
    with pytest.raises(nlxc.InputError):
        mf.get_veff(h2o, np.zeros((2, nao, nao)))  # RKS takes the total density matrix
    with pytest.raises(nlxc.InputError):
        mf.get_veff(ch2, np.zeros((nao, nao)))  # another molecule
