"""PySCF side of `nlxc.data.compute_references`: one job → reference labels, as numpy arrays.

Runs in the main process (`processes=1`) or in a "spawn" worker process. It uses only numpy
and PySCF and never writes files: the main process alone writes the HDF5 file. (Importing this
module imports the parent package `nlxc`, and with it JAX; nothing here uses JAX.)

A job is a plain dict (picklable, no nlxc objects):

- `molecule`: `{"name", "symbols", "positions" (Å), "charge", "spin"}`.
- `methods`: canonical method strings (lower-case). A job holds either one SCF method (an xc
  string or `"hf"`) or the correlated methods (`"mp2"`, `"ccsd"`, `"ccsd(t)"`) of one molecule,
  which share one conventional Hartree–Fock solution and one CCSD solution.
- `basis`, `grid_level`.

The result is a list with one dict per method, in the job's order: either
`{"method", "ok": True, "arrays": {name: float64 array}, "attrs": {name: scalar}}` or
`{"method", "ok": False, "error": one-line message}`. Errors (including SCF non-convergence)
are returned, not raised, so that one failure does not stop the other entries.
"""

from __future__ import annotations

import numpy as np

from ..system import BASIS_SET_EXCHANGE_WARNING
from ._molecule import Molecule

CORRELATED_METHODS = ("mp2", "ccsd", "ccsd(t)")  # post-HF methods, run on one shared HF solution
SCF_CONV_TOL = 1e-10  # Hartree, SCF energy change
SCF_MAX_CYCLE = 100  # DIIS cycles
NEWTON_MAX_CYCLE = 50  # second-order (PySCF `mf.newton()`) cycles after DIIS did not converge; 0: none
CC_CONV_TOL = 1e-9  # Hartree, CCSD energy change
CC_CONV_TOL_NORMT = 1e-7  # CCSD amplitude change


def init_worker(single_thread: bool) -> None:
    """Pool initializer: one OpenMP thread for PySCF per worker process when asked, and PySCF's
    "install basis-set-exchange" hint (printed by every `df.make_auxbasis`) silenced."""
    import warnings

    warnings.filterwarnings("ignore", message=BASIS_SET_EXCHANGE_WARNING, category=UserWarning)
    if single_thread:
        from pyscf import lib

        lib.num_threads(1)


def _mole(job):
    m = job["molecule"]
    molecule = Molecule(m["name"], tuple(m["symbols"]), np.asarray(m["positions"], float),
                        m["charge"], m["spin"])
    return molecule.to_mole(job["basis"])


def _spin_stack(a, restricted: bool) -> np.ndarray:
    """Restricted `(n, ...)` → `(2, n, ...)` (duplicated); unrestricted `(2, n, ...)` unchanged."""
    a = np.asarray(a, dtype=np.float64)
    return np.ascontiguousarray(np.stack([a, a]) if restricted else a)


def _density_stack(dm, restricted: bool) -> np.ndarray:
    """Spin-traced `P` (restricted) → `(P/2, P/2)`; `(Pα, Pβ)` unchanged; as `(2, nao, nao)`."""
    dm = np.asarray(dm, dtype=np.float64)
    if restricted:
        dm = np.stack([dm / 2, dm / 2])
    return np.ascontiguousarray(dm)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or "(no message)"
    return f"{type(err).__name__}: {text}"


def _hartree_fock(mol, *, density_fitted: bool):
    """Converged RHF/UHF (`pyscf.scf.RHF`/`UHF`), optionally density-fitted with the JK-fit basis."""
    from pyscf import df, scf

    mf = scf.RHF(mol) if mol.spin == 0 else scf.UHF(mol)
    if density_fitted:
        mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    return mf


def _run_scf(mf, label: str):
    mf.verbose = 0
    mf.chkfile = None  # no PySCF checkpoint file
    mf.init_guess = "minao"
    mf.conv_tol = SCF_CONV_TOL
    mf.max_cycle = SCF_MAX_CYCLE
    mf.kernel()
    diis_cycles = int(mf.cycles)
    newton = f" and {NEWTON_MAX_CYCLE} Newton cycles" if NEWTON_MAX_CYCLE else ""
    if not mf.converged and NEWTON_MAX_CYCLE:
        # PySCF's DIIS can oscillate between nearly degenerate states (the ³P O atom with B3LYP
        # at grid level 1 on one OpenMP thread, for one): PySCF's second-order solver
        # (`mf.newton()`, augmented-Hessian Newton) goes on from the density where DIIS stopped.
        # Recorded in the entry (`newton_fallback`), never silent.
        dm = mf.make_rdm1()
        mf = mf.newton()
        mf.max_cycle = NEWTON_MAX_CYCLE
        mf.kernel(dm0=dm)
        if mf.converged:
            return mf, {"scf_iterations": diis_cycles, "newton_fallback": True}
    if not mf.converged:
        raise RuntimeError(f"{label} SCF did not converge in {SCF_MAX_CYCLE} DIIS cycles{newton} "
                           f"(conv_tol {SCF_CONV_TOL:g} Ha)")
    return mf, {"scf_iterations": diis_cycles, "newton_fallback": False}


def _scf_entry(mol, method: str, grid_level: int) -> dict:
    """HF or KS-DFT, density-fitted exactly as `nlxc.System.from_pyscf` does."""
    from pyscf import df, dft

    restricted = mol.spin == 0
    if method == "hf":
        mf = _hartree_fock(mol, density_fitted=True)
    else:
        mf = dft.RKS(mol, xc=method) if restricted else dft.UKS(mol, xc=method)
        mf.grids.level = grid_level
        mf.small_rho_cutoff = 0.0  # keep every grid point, as nlxc does
        mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf, provenance = _run_scf(mf, "HF" if method == "hf" else "KS")

    dm = np.asarray(mf.make_rdm1())
    fock = np.asarray(mf.get_fock(dm=dm))  # h + J + K/Vxc at the converged density, no DIIS
    s = mf.get_ovlp()
    mo_energy, mo_coeff = mf.eig(fock, s)
    mo_occ = mf.get_occ(mo_energy, mo_coeff)
    arrays = {
        "density_matrix": _density_stack(dm, restricted),
        "fock_matrix": _spin_stack(fock, restricted),
        "orbital_energies": _spin_stack(mo_energy, restricted),
        "orbital_coefficients": _spin_stack(mo_coeff, restricted),
        # per spin orbital: 1 or 0 (a restricted 2 becomes 1 in each spin channel)
        "occupations": _spin_stack(np.asarray(mo_occ, float) / (2 if restricted else 1), restricted),
    }
    attrs = {
        "energy": float(mf.e_tot),
        "converged": True,
        "restricted": bool(restricted),
        **provenance,
    }
    return {"arrays": arrays, "attrs": attrs}


def _correlated_entries(mol, methods) -> list[dict]:
    """MP2 / CCSD / CCSD(T) (`pyscf.mp.MP2`, `pyscf.cc.CCSD`, `CCSD.ccsd_t`) on conventional HF."""
    from pyscf import cc, mp

    restricted = mol.spin == 0
    results = []
    try:
        mf, provenance = _run_scf(_hartree_fock(mol, density_fitted=False), "HF")
    except Exception as err:  # noqa: BLE001  (reported per entry)
        return [{"method": m, "ok": False, "error": _one_line(err)} for m in methods]
    common = {"converged": True, "restricted": bool(restricted), "scf_energy": float(mf.e_tot), **provenance}

    ccsd = None
    ccsd_error = None
    for method in methods:
        try:
            if method == "mp2":
                pt = mp.MP2(mf)
                pt.verbose = 0
                pt.kernel()
                energy = float(pt.e_tot)
                dm = pt.make_rdm1(ao_repr=True)
            else:
                if ccsd is None and ccsd_error is None:
                    try:
                        ccsd = cc.CCSD(mf)
                        ccsd.verbose = 0
                        ccsd.conv_tol = CC_CONV_TOL
                        ccsd.conv_tol_normt = CC_CONV_TOL_NORMT
                        ccsd.kernel()
                        if not ccsd.converged:
                            raise RuntimeError(f"CCSD did not converge in {ccsd.max_cycle} cycles")
                        ccsd_dm = ccsd.make_rdm1(ao_repr=True)  # solves the Λ equations
                        if not ccsd.converged_lambda:
                            raise RuntimeError("CCSD Λ equations did not converge")
                    except Exception as err:  # noqa: BLE001
                        ccsd, ccsd_error = None, err
                if ccsd_error is not None:
                    raise ccsd_error
                energy = float(ccsd.e_tot)
                if method == "ccsd(t)":
                    energy += float(ccsd.ccsd_t())
                dm = ccsd_dm
            results.append({
                "method": method, "ok": True,
                "arrays": {"density_matrix": _density_stack(dm, restricted)},
                "attrs": {"energy": energy, **common},
            })
        except Exception as err:  # noqa: BLE001
            results.append({"method": method, "ok": False, "error": _one_line(err)})
    return results


def compute_job(job: dict) -> list[dict]:
    """Compute the reference entries of one job (see the module docstring); never raises
    for a failed calculation, only returns it as `{"ok": False, "error": ...}`."""
    import pyscf

    methods = list(job["methods"])
    try:
        mol = _mole(job)
    except Exception as err:  # noqa: BLE001
        return [{"method": m, "ok": False, "error": _one_line(err)} for m in methods]
    if any(m in CORRELATED_METHODS for m in methods):
        results = _correlated_entries(mol, methods)
    else:
        results = []
        for method in methods:
            try:
                results.append({"method": method, "ok": True,
                                 **_scf_entry(mol, method, job["grid_level"])})
            except Exception as err:  # noqa: BLE001
                results.append({"method": method, "ok": False, "error": _one_line(err)})
    for r in results:
        if r["ok"]:
            r["attrs"]["pyscf_version"] = pyscf.__version__
    return results
