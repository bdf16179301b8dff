"""Reference labels from PySCF (energies, density and Fock matrices), stored in HDF5.

[`compute_references`][nlxc.data.compute_references] runs PySCF for a list of molecules and
methods and appends each result to an HDF5 file as soon as it is computed (an interrupted run
resumes where it stopped); [`ReferenceDataset`][nlxc.data.ReferenceDataset] reads the file.

**File layout** (format `"nlxc-reference"`, version 1):

- root attributes: `format`, `format_version`, `basis`, `grid_level`,
  `auxbasis` (`"make_auxbasis (JK-fit)"`), `pyscf_version`, `nlxc_version`, `created`
  (of the run that created the file).
- `/molecules/<name>`: attributes `symbols`, `positions_angstrom` `(natom, 3)`, `charge`,
  `spin` (2S), `fingerprint` ([`Molecule.fingerprint`][nlxc.data.Molecule.fingerprint]).
- `/molecules/<name>/<method group>`: one entry. Datasets `density_matrix` `(2, nao, nao)` and,
  for SCF methods, `fock_matrix` `(2, nao, nao)`, `orbital_energies` `(2, nmo)`,
  `orbital_coefficients` `(2, nao, nmo)`, `occupations` `(2, nmo)`; attributes `method` (as
  given), `energy` (Hartree), `converged`, `restricted`, `scf_iterations`, `newton_fallback`,
  `pyscf_version`,
  `scf_energy` (correlated methods only) and, written last, `data_sha256`: a SHA-256 of all
  datasets and attributes. An entry without `data_sha256` is incomplete (an interrupted write).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from .._errors import InputError
from .._version import __version__
from ..system import quiet_basis_lookup
from . import _pyscf_worker
from ._molecule import Molecule
from ._pyscf_worker import CORRELATED_METHODS

FORMAT = "nlxc-reference"
FORMAT_VERSION = 1
AUXBASIS_LABEL = "make_auxbasis (JK-fit)"
_ARRAY_NAMES = ("density_matrix", "fock_matrix", "orbital_energies", "orbital_coefficients",
                "occupations")


class DatasetError(InputError):
    """A reference file that cannot be used: not an nlxc reference file, truncated or corrupt,
    written for another basis or grid, holding a molecule under the same name with another
    geometry, or an entry whose data do not match its checksum. The message is one line and
    names the file."""


class ReferenceComputationError(RuntimeError):
    """Some reference calculations failed (e.g. the SCF did not converge); nothing was stored
    for them, every other entry was stored.

    **Attributes:** `failures`: `((molecule name, method, one-line message), ...)`.
    """

    def __init__(self, path: str, failures: Sequence[tuple[str, str, str]], total: int):
        self.failures = tuple(failures)
        shown = "; ".join(f"{n}/{m}: {e}" for n, m, e in self.failures[:3])
        more = f"; and {len(self.failures) - 3} more" if len(self.failures) > 3 else ""
        super().__init__(f"{len(self.failures)} of {total} reference calculations failed and were "
                         f"not stored in {path}: {shown}{more}")


@dataclasses.dataclass(frozen=True, eq=False)
class ReferenceEntry:
    """One reference calculation: a molecule with one method (atomic units, numpy arrays).

    **Fields** (`nao` basis functions, `nmo` molecular orbitals):

    - `name`, `method`: the molecule's name and the method as it was given.
    - `energy`: total energy, Hartree (for `"ccsd(t)"`: E(CCSD) + E(T)).
    - `density_matrix`: α and β density matrices in the AO basis, `(2, nao, nao)` (restricted:
      both are P/2). SCF methods: the converged density. `"mp2"`, `"ccsd"`: the unrelaxed 1-RDM
      (PySCF's `make_rdm1(ao_repr=True)`; for CCSD from the Λ equations). `"ccsd(t)"`: the CCSD
      1-RDM (no (T) contribution).
    - `fock_matrix`: α and β Fock (Kohn–Sham) matrices h + J + (K or Vxc) of the method at its own
      converged density, `(2, nao, nao)`, Hartree (PySCF's `mf.get_fock(dm=dm)`, no level shift or
      DIIS). `None` for correlated methods, like the three fields below.
    - `orbital_energies` `(2, nmo)` Hartree and `orbital_coefficients` `(2, nao, nmo)`: the
      eigenpairs F C = S C ε of `fock_matrix` (`mf.eig`). The density rebuilt from them and
      `occupations` agrees with `density_matrix` to the SCF convergence (~1e-5).
    - `occupations`: per spin orbital, 1 or 0, `(2, nmo)` (restricted: duplicated).
    - `converged`: always `True` for a stored entry (non-converged results are never stored).
    - `restricted`: `True` for RHF/RKS/RMP2/RCCSD (2S = 0), `False` for the UHF-based ones.
    - `scf_iterations`: PySCF's DIIS cycle count (`mf.cycles`) of the (underlying) SCF.
    - `newton_fallback`: whether DIIS did not converge in its cycles and PySCF's second-order
      solver (`mf.newton()`) converged from where it stopped (see
      [`compute_references`][nlxc.data.compute_references]); `None` in files written before
      nlxc recorded it.
    - `scf_energy`: for correlated methods the conventional (not density-fitted) HF energy,
      Hartree; `None` for SCF methods.
    """

    name: str
    method: str
    energy: float
    density_matrix: np.ndarray
    fock_matrix: np.ndarray | None = None
    orbital_energies: np.ndarray | None = None
    orbital_coefficients: np.ndarray | None = None
    occupations: np.ndarray | None = None
    converged: bool = True
    restricted: bool = True
    scf_iterations: int | None = None
    newton_fallback: bool | None = None
    scf_energy: float | None = None

    def __repr__(self):
        nao = self.density_matrix.shape[-1]
        return f"ReferenceEntry({self.name!r}, {self.method!r}, energy={self.energy:.10f}, nao={nao})"


# ----------------------------------------------------------------------------- helpers


def _method_key(method: str) -> str:
    """The canonical (lower-case) form of a method string."""
    return method.strip().lower()


def _method_group(method: str) -> str:
    """A safe HDF5 group name for a method: lower case, `"(t)"` → `"_t"`; other characters
    outside `[a-z0-9_+-]` are replaced by `_` and a short hash is appended (no collisions)."""
    key = _method_key(method)
    name = key.replace("(t)", "_t")
    safe = re.sub(r"[^a-z0-9_+\-]", "_", name)
    if safe != name:
        safe += "_" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return safe


def _normalize_basis(basis: str) -> str:
    return re.sub(r"[\s\-_]", "", basis.lower())


def _python(value):
    """h5py attribute value → plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_python(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


def _digest(arrays: dict[str, np.ndarray], attrs: dict) -> str:
    """SHA-256 over the arrays (name, dtype, shape, bytes, sorted by name) and the attributes
    (JSON, sorted keys; `data_sha256` itself excluded)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(a.tobytes())
    meta = {k: _python(v) for k, v in attrs.items() if k != "data_sha256"}
    h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def _open(path: str, mode: str):
    """Open an existing nlxc reference file; `DatasetError` if it is not one (file untouched)."""
    import h5py

    if not os.path.isfile(path):
        raise DatasetError(f"{path} is not a file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}") from None
    if not is_hdf5:
        raise DatasetError(f"{path} is not an HDF5 file (so not an nlxc reference file); "
                           "refusing to touch it")
    try:
        f = h5py.File(path, mode)
    except OSError as err:
        raise DatasetError(f"cannot open {path} as HDF5 (truncated, corrupt or locked by "
                           f"another process): {' '.join(str(err).split())}") from None
    try:
        fmt = _python(f.attrs.get("format"))
        if fmt != FORMAT:
            raise DatasetError(f"{path} is not an nlxc reference file (its 'format' attribute is "
                               f"{fmt!r}, expected {FORMAT!r}); refusing to touch it")
        version = _python(f.attrs.get("format_version"))
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DatasetError(f"{path} has format_version {version!r}; this nlxc reads version "
                               f"{FORMAT_VERSION} (upgrade nlxc)")
        for attr in ("basis", "grid_level"):
            if attr not in f.attrs:
                raise DatasetError(f"{path} is missing the root attribute {attr!r}")
        basis = _python(f.attrs["basis"])
        if not isinstance(basis, str) or not basis.strip():
            raise DatasetError(f"{path}: the root attribute 'basis' must be a basis-set name, "
                               f"got {basis!r}")
        level = _python(f.attrs["grid_level"])
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise DatasetError(f"{path}: the root attribute 'grid_level' must be an integer "
                               f"between 0 and 9, got {level!r}")
    except BaseException:
        f.close()
        raise
    return f


def _molecule_from_group(path: str, name: str, group) -> Molecule:
    try:
        attrs = {k: _python(group.attrs[k]) for k in
                 ("symbols", "positions_angstrom", "charge", "spin", "fingerprint")}
    except KeyError as err:
        raise DatasetError(f"{path}: molecule {name!r} is missing the attribute {err}") from None
    molecule = Molecule(name, tuple(attrs["symbols"]), np.asarray(attrs["positions_angstrom"], float)
                        .reshape(-1, 3), attrs["charge"], attrs["spin"])
    if molecule.fingerprint() != attrs["fingerprint"]:
        raise DatasetError(f"{path}: molecule {name!r} does not match its stored fingerprint "
                           "(corrupt file)")
    return molecule


def _validate_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise InputError(f"molecule name {name!r} cannot be stored: it must be a non-empty string "
                         "without '/'")
    return name


def check_methods(methods: Sequence[str]) -> list[str]:
    """Methods as given (stripped), deduplicated by canonical form (case, spaces).

    A method is `"hf"`, one of the correlated methods (`"mp2"`, `"ccsd"`, `"ccsd(t)"`) or an
    exchange-correlation functional that PySCF's libxc interface parses.

    **Raises:** [`nlxc.InputError`][] naming the first unknown method.
    """
    from pyscf.dft import libxc

    if isinstance(methods, str):
        methods = (methods,)
    out, seen = [], set()
    for method in methods:
        if not isinstance(method, str) or not method.strip():
            raise InputError(f"method {method!r} is not a non-empty string")
        key = _method_key(method)
        if key in seen:
            continue
        seen.add(key)
        if key not in ("hf",) + CORRELATED_METHODS:
            try:
                libxc.parse_xc(key)
            except (KeyError, ValueError, TypeError) as err:
                raise InputError(f"unknown method {method!r}: neither 'hf', 'mp2', 'ccsd', "
                                 f"'ccsd(t)' nor an xc functional PySCF knows ({err})") from None
        out.append(method.strip())
    if not out:
        raise InputError("no methods given")
    return out


def _write_entry(group, method: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """Create the entry group; datasets, then attributes, then `data_sha256` (last)."""
    entry = group.create_group(_method_group(method), track_order=True)
    for name, a in arrays.items():
        a = np.ascontiguousarray(a, dtype=np.float64)
        # gzip (lossless) for matrices; tiny arrays are not worth a chunked layout
        compress = {"compression": "gzip", "shuffle": True} if a.size >= 64 else {}
        entry.create_dataset(name, data=a, **compress)
    attrs = {"method": method, **attrs}
    for key, value in attrs.items():
        entry.attrs[key] = value
    stored_arrays = {name: np.ascontiguousarray(a, dtype=np.float64) for name, a in arrays.items()}
    entry.attrs["data_sha256"] = _digest(stored_arrays, attrs)


def _plan(path: str, molecules: dict[str, Molecule], methods: list[str], basis: str,
          grid_level: int) -> tuple[set[tuple[str, str]], list[tuple[str, str]]]:
    """Check an existing file against the request (read-only). Returns the complete
    `(name, method key)` pairs and the incomplete `(name, group)` entries to recompute."""
    done: set[tuple[str, str]] = set()
    incomplete: list[tuple[str, str]] = []
    try:
        with _open(path, "r") as f:
            stored_basis = _python(f.attrs["basis"])
            stored_level = _python(f.attrs["grid_level"])
            if _normalize_basis(str(stored_basis)) != _normalize_basis(basis):
                raise DatasetError(f"{path} holds references in basis {stored_basis!r}, not "
                                   f"{basis!r}; use another file")
            if stored_level != grid_level:
                raise DatasetError(f"{path} holds references on grid level {stored_level}, not "
                                   f"{grid_level}; use another file")
            root = f.get("molecules")
            for name, molecule in molecules.items():
                if root is None or name not in root:
                    continue
                g = root[name]
                stored = _python(g.attrs.get("fingerprint"))
                if stored is None:  # interrupted while the molecule group was created
                    if len(g) != 0:
                        raise DatasetError(f"{path}: molecule {name!r} has entries but no "
                                           "fingerprint (corrupt file)")
                    continue
                if stored != molecule.fingerprint():
                    raise DatasetError(
                        f"{path} already holds a different molecule named {name!r} (other "
                        f"geometry, charge or spin: fingerprint {stored[:12]}… ≠ "
                        f"{molecule.fingerprint()[:12]}…); rename it or use another file")
                for method in methods:
                    key = _method_group(method)
                    if key not in g:
                        continue
                    if "data_sha256" not in g[key].attrs:
                        incomplete.append((name, key))
                        continue
                    stored_method = str(_python(g[key].attrs.get("method", "")))
                    if _method_key(stored_method) != _method_key(method):
                        raise DatasetError(f"{path}: entry {name}/{key} holds method "
                                           f"{stored_method!r}, not {method!r}")
                    done.add((name, _method_key(method)))
    except (OSError, KeyError, ValueError, TypeError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"cannot read {path} (truncated or corrupt): "
                           f"{type(err).__name__}: {' '.join(str(err).split())}") from None
    return done, incomplete


def _molecule_group(root, molecule: Molecule):
    """The molecule's group, created (with its attributes) if needed."""
    g = root[molecule.name] if molecule.name in root else root.create_group(molecule.name,
                                                                           track_order=True)
    if "fingerprint" not in g.attrs:
        g.attrs["symbols"] = list(molecule.symbols)
        g.attrs["positions_angstrom"] = np.asarray(molecule.positions, dtype=np.float64)
        g.attrs["charge"] = molecule.charge
        g.attrs["spin"] = molecule.spin
        g.attrs["fingerprint"] = molecule.fingerprint()  # last: marks the group complete
    return g


# ----------------------------------------------------------------------------- writing


def compute_references(
    molecules: Sequence[Molecule],
    path: str | os.PathLike,
    *,
    methods: Sequence[str] = ("b3lyp",),
    basis: str = "def2-svp",
    grid_level: int = 3,
    processes: int = 1,
    progress: bool = True,
    on_entry: Callable[[str, str], None] | None = None,
) -> ReferenceDataset:
    """Compute PySCF reference labels for every (molecule, method) and store them in HDF5.

    The settings are those of nlxc's own SCF, so that [`nlxc.scf.solve`][] on
    `System.from_pyscf(mol, grid_level=grid_level)` reproduces the HF/DFT references:

    - HF and DFT: `pyscf.scf.RHF`/`UHF` and `pyscf.dft.RKS`/`UKS` (restricted iff 2S = 0),
      density-fitted with `mf.density_fit(auxbasis=pyscf.df.make_auxbasis(mol))` (the JK-fit
      basis, passed explicitly), `mf.grids.level = grid_level`, `small_rho_cutoff = 0` (no grid
      pruning by density), initial guess `"minao"`, `conv_tol = 1e-10` Ha, at most 100 DIIS
      cycles. Where DIIS has not converged by then (it can oscillate between nearly degenerate
      states, e.g. the ³P O atom with B3LYP at grid level 1), PySCF's second-order solver
      (`mf.newton()`) goes on from the density where DIIS stopped, at most 50 cycles; the
      entry records it (`newton_fallback`). Only a calculation that fails both is a failure.
    - `"mp2"`, `"ccsd"`, `"ccsd(t)"`: conventional (not density-fitted) RHF/UHF with the same
      SCF settings, then `pyscf.mp.MP2`, `pyscf.cc.CCSD` (`conv_tol = 1e-9` Ha,
      `conv_tol_normt = 1e-7`) and `CCSD.ccsd_t`, all electrons correlated. The correlated
      methods of one molecule share one HF and one CCSD calculation.

    Each entry is written by this (main) process as soon as it is computed, then the file is
    flushed, so an interruption loses at most the calculations in flight. Entries already
    complete in the file are skipped: to resume, call again with the same arguments. An entry
    left incomplete by an interrupted write (no `data_sha256`) is deleted and recomputed; nothing
    else is ever deleted or overwritten.

    **Arguments:**

    - `molecules`: the [`Molecule`][nlxc.data.Molecule]s; names must be unique (the same
      molecule twice is fine) and contain no `/`.
    - `path`: the HDF5 file; created if it does not exist, appended to if it is an nlxc
      reference file for the same `basis` and `grid_level`.
    - `methods`: any PySCF xc string (`"pbe"`, `"b3lyp"`, `"svwn"`, `"b88,lyp"`, ...), `"hf"`,
      `"mp2"`, `"ccsd"` or `"ccsd(t)"` (case-insensitive).
    - `basis`: basis-set name PySCF knows.
    - `grid_level`: PySCF grid level, 0–9 (used by DFT).
    - `processes`: number of worker processes. With more than one, a
      `concurrent.futures.ProcessPoolExecutor` with the `"spawn"` start method runs the
      calculations, each worker with one PySCF (OpenMP) thread; with one, they run in this
      process with PySCF's current thread count. As with any "spawn" multiprocessing, a script
      that calls this with `processes > 1` must guard its top level with
      `if __name__ == "__main__":`.
    - `progress`: show a `tqdm` progress bar.
    - `on_entry`: called as `on_entry(name, method)` in this process after each entry has been
      written and flushed.

    **Returns:** the [`ReferenceDataset`][nlxc.data.ReferenceDataset] of the file.

    **Raises:**

    - [`nlxc.InputError`][]: an invalid molecule (for this basis), duplicate names, an unknown
      method, `grid_level` outside 0–9 or `processes < 1`; raised before anything is written.
    - [`DatasetError`][nlxc.data.DatasetError]: `path` exists but is not an nlxc reference file
      (not HDF5, another `format`), is truncated/corrupt, or holds another basis or grid level,
      or a molecule of the same name with another geometry, charge or spin; the file is left
      untouched.
    - [`ReferenceComputationError`][nlxc.data.ReferenceComputationError]: after all other
      entries were stored, when some calculations failed (e.g. an SCF that did not converge);
      those entries are not stored.
    """
    import h5py
    import pyscf
    from tqdm.auto import tqdm

    path = os.fspath(path)
    if not isinstance(basis, str) or not basis.strip():
        raise InputError(f"basis must be a basis-set name, got {basis!r}")
    if isinstance(grid_level, bool) or not isinstance(grid_level, (int, np.integer)) \
            or not 0 <= grid_level <= 9:
        raise InputError(f"grid level must be an integer between 0 and 9, got {grid_level!r}")
    grid_level = int(grid_level)
    if isinstance(processes, bool) or not isinstance(processes, (int, np.integer)) or processes < 1:
        raise InputError(f"processes must be a positive integer, got {processes!r}")
    methods = check_methods(methods)

    unique: dict[str, Molecule] = {}
    for molecule in molecules:
        if not isinstance(molecule, Molecule):
            raise InputError(f"expected nlxc.data.Molecule, got {type(molecule).__name__}")
        _validate_name(molecule.name)
        if molecule.name in unique:
            if unique[molecule.name].fingerprint() != molecule.fingerprint():
                raise InputError(f"two different molecules are named {molecule.name!r}")
            continue
        molecule.to_mole(basis)  # validates geometry, charge/spin and basis (InputError)
        unique[molecule.name] = molecule

    # --- read-only pass: check the file and plan the work (nothing is written on error)
    exists = os.path.lexists(path)
    done, incomplete = (_plan(path, unique, methods, basis, grid_level) if exists
                        else (set(), []))
    todo = [(name, m) for name in unique for m in methods if (name, _method_key(m)) not in done]
    jobs: list[dict] = []
    for name, molecule in unique.items():
        mine = [m for n, m in todo if n == name]
        payload = {"name": name, "symbols": list(molecule.symbols),
                   "positions": molecule.positions.tolist(), "charge": molecule.charge,
                   "spin": molecule.spin}
        scf_methods = [m for m in mine if _method_key(m) not in CORRELATED_METHODS]
        correlated = [m for m in mine if _method_key(m) in CORRELATED_METHODS]
        for group in [[m] for m in scf_methods] + ([correlated] if correlated else []):
            jobs.append({"molecule": payload, "methods": [_method_key(m) for m in group],
                         "given": group, "basis": basis, "grid_level": grid_level})

    # --- write pass
    if exists and not todo:
        return ReferenceDataset(path)
    if exists:
        f = _open(path, "r+")
    else:
        try:
            f = h5py.File(path, "w-", track_order=True)
        except (OSError, FileExistsError) as err:
            raise DatasetError(f"cannot create {path}: {' '.join(str(err).split())}") from None
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "basis": basis,
            "grid_level": grid_level, "auxbasis": AUXBASIS_LABEL,
            "pyscf_version": pyscf.__version__, "nlxc_version": __version__,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        })
    failures: list[tuple[str, str, str]] = []
    with f:
        root = f["molecules"] if "molecules" in f else f.create_group("molecules",
                                                                        track_order=True)
        for name, key in incomplete:
            del root[name][key]
        f.flush()

        total = len(unique) * len(methods)
        with tqdm(total=total, initial=total - len(todo), disable=not progress,
                  desc="references", unit="entry", dynamic_ncols=True) as bar:

            def store(job: dict, results: list[dict]) -> None:
                name = job["molecule"]["name"]
                for given, result in zip(job["given"], results):
                    bar.set_postfix_str(f"{name}/{given}", refresh=False)
                    if not result["ok"]:
                        failures.append((name, given, result["error"]))
                        bar.update(1)
                        continue
                    _write_entry(_molecule_group(root, unique[name]), given, result["arrays"],
                                 result["attrs"])
                    f.flush()
                    bar.update(1)
                    if on_entry is not None:
                        on_entry(name, given)

            if processes == 1 or len(jobs) <= 1:
                for job in jobs:
                    bar.set_postfix_str(f"{job['molecule']['name']}/{','.join(job['given'])}")
                    with quiet_basis_lookup():
                        results = _pyscf_worker.compute_job(job)
                    store(job, results)
            else:
                _run_pool(jobs, min(processes, len(jobs)), store)

    if failures:
        raise ReferenceComputationError(path, failures, len(todo))
    return ReferenceDataset(path)


def _run_pool(jobs: list[dict], processes: int, store: Callable[[dict, list[dict]], None]) -> None:
    """Run the jobs in "spawn" worker processes; `store` each result as it arrives."""
    import concurrent.futures
    import multiprocessing

    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=processes, mp_context=multiprocessing.get_context("spawn"),
        initializer=_pyscf_worker.init_worker, initargs=(True,))
    try:
        futures = {executor.submit(_pyscf_worker.compute_job, job): job for job in jobs}
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                results = future.result()
            except concurrent.futures.process.BrokenProcessPool as err:
                raise RuntimeError(
                    "a worker process died (out of memory, killed, or a calling script without "
                    "the `if __name__ == '__main__':` guard that the 'spawn' start method needs); "
                    "the entries completed so far are stored: call compute_references again to "
                    "resume") from err
            except Exception as err:  # noqa: BLE001  (e.g. a result that could not be pickled)
                message = f"{type(err).__name__}: {' '.join(str(err).split())}"
                results = [{"method": m, "ok": False, "error": message} for m in job["methods"]]
            store(job, results)
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


# ----------------------------------------------------------------------------- reading


class ReferenceDataset:
    """A reference file written by [`compute_references`][nlxc.data.compute_references].

    Opening reads the index (molecules, methods) and closes the file; each
    [`entry`][nlxc.data.ReferenceDataset.entry] (and [`energies`][nlxc.data.ReferenceDataset.energies])
    reopens it briefly, reads the arrays into numpy and verifies their checksum: no data reach
    the caller unverified. No file handle is kept open. Only complete entries are listed.

    **Arguments:**

    - `path`: the HDF5 file.

    **Raises:** [`DatasetError`][nlxc.data.DatasetError] (naming the file, and the attribute)
    if the file does not exist, is not an nlxc reference file, has a newer format version, a
    root attribute `basis` that is not a name or `grid_level` that is not an integer 0–9, or is
    truncated/corrupt.
    """

    def __init__(self, path: str | os.PathLike):
        self._path = os.fspath(path)
        if not os.path.exists(self._path):
            raise DatasetError(f"{self._path} does not exist")
        molecules: dict[str, Molecule] = {}
        entries: dict[tuple[str, str], tuple[str, float]] = {}  # (name, group) → (method, E)
        incomplete: set[tuple[str, str]] = set()
        try:
            with _open(self._path, "r") as f:
                self._metadata = {k: _python(v) for k, v in f.attrs.items()}
                root = f.get("molecules", {})
                for name in root:
                    g = root[name]
                    if "fingerprint" not in g.attrs and len(g) == 0:
                        continue  # interrupted while creating the molecule group
                    molecules[name] = _molecule_from_group(self._path, name, g)
                    for key in g:
                        attrs = g[key].attrs
                        if "data_sha256" not in attrs:
                            incomplete.add((name, key))
                            continue
                        entries[(name, key)] = (str(_python(attrs["method"])),
                                                float(_python(attrs["energy"])))
        except (OSError, KeyError, ValueError, TypeError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"cannot read {self._path} (truncated or corrupt): "
                               f"{type(err).__name__}: {' '.join(str(err).split())}") from None
        self._molecules = molecules
        self._entries = entries
        self._incomplete = incomplete

    @property
    def path(self) -> str:
        """The file's path."""
        return self._path

    @property
    def basis(self) -> str:
        """The basis set of every entry."""
        return str(self._metadata["basis"])

    @property
    def grid_level(self) -> int:
        """PySCF's grid level of the DFT entries."""
        return int(self._metadata["grid_level"])

    @property
    def metadata(self) -> dict:
        """The root attributes (format, versions, basis, grid level, auxbasis, creation time)."""
        return dict(self._metadata)

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the molecules, in the order they were first written."""
        return tuple(self._molecules)

    def molecule(self, name: str) -> Molecule:
        """The stored [`Molecule`][nlxc.data.Molecule] `name`.

        **Raises:** [`DatasetError`][nlxc.data.DatasetError] if there is none.
        """
        try:
            return self._molecules[name]
        except KeyError:
            raise DatasetError(f"{self._path} has no molecule {name!r}") from None

    def methods(self, name: str) -> tuple[str, ...]:
        """The methods (as given) with a complete entry for molecule `name`.

        **Raises:** [`DatasetError`][nlxc.data.DatasetError] if there is no such molecule.
        """
        self.molecule(name)
        return tuple(method for (n, _), (method, _) in self._entries.items() if n == name)

    def energies(self, method: str) -> dict[str, float]:
        """`{name: total energy (Hartree)}` for every molecule with a complete `method` entry.

        Each entry is read and its `data_sha256` verified, as
        [`entry`][nlxc.data.ReferenceDataset.entry] does (the checksum covers the arrays, so
        they are read too).

        **Raises:** [`DatasetError`][nlxc.data.DatasetError] (naming the file and the entry) if
        an entry does not match its checksum (corrupt or modified file).
        """
        key = _method_group(method)
        return {n: self.entry(n, method).energy for (n, k) in self._entries if k == key}

    def entry(self, name: str, method: str) -> ReferenceEntry:
        """Read one entry (all arrays into numpy) and verify its `data_sha256`.

        **Arguments:** `name` (molecule name), `method` (case-insensitive, e.g. `"CCSD(T)"`).

        **Returns:** a [`ReferenceEntry`][nlxc.data.ReferenceEntry].

        **Raises:** [`DatasetError`][nlxc.data.DatasetError] if the entry is missing, incomplete
        (interrupted write: run `compute_references` again), or its data do not match the
        checksum (corrupt or modified file).
        """
        self.molecule(name)
        key = _method_group(method)
        if (name, key) not in self._entries:
            if (name, key) in self._incomplete:
                raise DatasetError(f"{self._path}: entry {name}/{method} is incomplete (an "
                                   "interrupted write); run compute_references again")
            raise DatasetError(f"{self._path} has no entry {name}/{method}")
        try:
            with _open(self._path, "r") as f:
                g = f["molecules"][name][key]
                arrays = {k: np.asarray(g[k][()]) for k in g}
                attrs = {k: _python(v) for k, v in g.attrs.items()}
        except (OSError, KeyError, ValueError, TypeError) as err:
            if isinstance(err, DatasetError):
                raise
            raise DatasetError(f"cannot read entry {name}/{method} of {self._path}: "
                               f"{type(err).__name__}: {' '.join(str(err).split())}") from None
        if "data_sha256" not in attrs:
            raise DatasetError(f"{self._path}: entry {name}/{method} is incomplete (an "
                               "interrupted write); run compute_references again")
        if _digest(arrays, attrs) != attrs["data_sha256"]:
            raise DatasetError(f"{self._path}: entry {name}/{method} does not match its checksum "
                               "(data_sha256): the file is corrupt or was modified")
        unknown = set(arrays) - set(_ARRAY_NAMES)
        if unknown or "density_matrix" not in arrays or "energy" not in attrs:
            raise DatasetError(f"{self._path}: entry {name}/{method} has an unexpected layout")
        for a in arrays.values():
            a.setflags(write=False)
        iterations = attrs.get("scf_iterations")
        newton = attrs.get("newton_fallback")
        scf_energy = attrs.get("scf_energy")
        return ReferenceEntry(
            name=name,
            method=str(attrs.get("method", method)),
            energy=float(attrs["energy"]),
            density_matrix=arrays["density_matrix"],
            fock_matrix=arrays.get("fock_matrix"),
            orbital_energies=arrays.get("orbital_energies"),
            orbital_coefficients=arrays.get("orbital_coefficients"),
            occupations=arrays.get("occupations"),
            converged=bool(attrs.get("converged", True)),
            restricted=bool(attrs.get("restricted", True)),
            scf_iterations=None if iterations is None else int(iterations),
            newton_fallback=None if newton is None else bool(newton),
            scf_energy=None if scf_energy is None else float(scf_energy),
        )

    def __contains__(self, item) -> bool:
        """`(name, method) in dataset`: whether a complete entry exists."""
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], str)):
            return False
        return (item[0], _method_group(item[1])) in self._entries

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """The `(name, method)` pairs of the complete entries."""
        return iter([(n, method) for (n, _), (method, _) in self._entries.items()])

    def __len__(self) -> int:
        """The number of complete entries ((molecule, method) pairs)."""
        return len(self._entries)

    def __repr__(self):
        counts: dict[str, int] = {}
        for method, _ in self._entries.values():
            counts[method] = counts.get(method, 0) + 1
        per_method = ", ".join(f"{m}: {c}" for m, c in counts.items())
        return (f"ReferenceDataset({self._path!r}, basis={self.basis!r}, "
                f"grid_level={self.grid_level}, {len(self._molecules)} molecules, "
                f"{len(self)} entries{' (' + per_method + ')' if per_method else ''})")
