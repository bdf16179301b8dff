"""`System`: a molecule, its basis, grid and integrals as a pytree of arrays.

PySCF computes everything here once, in numpy; downstream everything is JAX.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import warnings
from collections.abc import Iterator, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._errors import InputError
from .constants import ANGSTROM_TO_BOHR
from .grid_operators import AuxiliaryGridOperators, GridOperatorSpec, build_grid_operators

MIN_ATOM_DISTANCE_ANGSTROM = 0.1
MAX_GRID_LEVEL = 9

# PySCF (gto.basis.load) warns "Basis may be available in basis-set-exchange. It is recommended
# to install basis-set-exchange" whenever a basis file lacks an element, which is also how
# `df.make_auxbasis` probes for a fitting basis before it falls back to even-tempered functions.
BASIS_SET_EXCHANGE_WARNING = r"(Basis|ECP) may be available in basis-set-exchange"
"""Regular expression matching PySCF's "install basis-set-exchange" hint (a `UserWarning`)."""


@contextlib.contextmanager
def quiet_basis_lookup() -> Iterator[None]:
    """Silence PySCF's "install basis-set-exchange" `UserWarning` (only that one) in the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BASIS_SET_EXCHANGE_WARNING, category=UserWarning)
        yield


def _basis_key(name: str) -> str:
    """A basis name as PySCF looks it up: lower case, without '-', '_', spaces, '@…'."""
    return name.split("@")[0].lower().replace("-", "").replace("_", "").replace(" ", "")


def _basis_hint(name: str) -> str:
    """` (did you mean 'NAME'?)` for the closest basis name PySCF knows, or `''`."""
    from pyscf.gto import basis as pyscf_basis

    names: dict[str, str] = {}
    for key, module in pyscf_basis.ALIAS.items():
        stem = os.path.basename(module).removesuffix(".dat") if isinstance(module, str) else key
        names[key] = stem if _basis_key(stem) == key else key
    match = difflib.get_close_matches(_basis_key(name), list(names), n=1, cutoff=0.8)
    return f" (did you mean {names[match[0]]!r}?)" if match else ""


def check_basis(name: str, symbols: Sequence[str], *, kind: str = "basis") -> None:
    """Check that PySCF has basis `name` for every element of `symbols`.

    **Arguments:**

    - `name`: a basis-set name (e.g. `"def2-svp"`), a file PySCF can read, or basis text in
      NWChem format (which is not checked here; PySCF parses it when the `Mole` is built).
    - `symbols`: element symbols, e.g. `["O", "H", "H"]`.
    - `kind`: how the message names the basis, e.g. `"auxiliary basis"`.

    **Raises:** [`nlxc.InputError`][] (one line) for a name PySCF does not know (with the
    closest known name, if one is close) or a basis without functions for some element.
    """
    from pyscf.gto import basis as pyscf_basis
    from pyscf.lib.exceptions import BasisNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{kind} must be a basis-set name, got {name!r}")
    if "\n" in name:
        return
    elements = sorted(set(symbols))
    missing, unparsed = [], False
    with quiet_basis_lookup():
        for symbol in elements:
            try:
                pyscf_basis.load(name, symbol)
            except (BasisNotFoundError, KeyError) as err:  # KeyError: a Pople-like name PySCF cannot parse
                missing.append(symbol)
                unparsed = unparsed or isinstance(err, KeyError)
    if not missing:
        return
    key = _basis_key(name)
    known = (len(missing) < len(elements) or os.path.isfile(name)
             or any(key in table for table in (pyscf_basis.ALIAS, pyscf_basis.GTH_ALIAS,
                                                pyscf_basis.USER_BASIS_ALIAS, pyscf_basis.USER_GTH_ALIAS))
             or (key.startswith(("631", "321", "431")) and not unparsed))
    if known:
        raise InputError(f"{kind} {name!r} has no functions for {', '.join(missing)}")
    raise InputError(f"unknown {kind} {name!r}{_basis_hint(name)}")


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _write_block(buffer, block, start, axis):
    """buffer[..., start:start+len(block), ...] = block along `axis` (in place when donated)."""
    index = [0] * buffer.ndim
    index[axis] = start
    return jax.lax.dynamic_update_slice(buffer, block.astype(buffer.dtype), tuple(index))


class System(eqx.Module):
    """A molecule with its basis-set integrals, density-fitting tensor and integration grid.

    Every field is an array, so a `System` can be jitted, vmapped over (for equal shapes),
    sharded and saved. Build one with [`System.from_pyscf`][nlxc.System.from_pyscf],
    [`System.from_xyz`][nlxc.System.from_xyz] or [`System.from_ase`][nlxc.System.from_ase].
    All quantities are in atomic units (Hartree, Bohr).

    **Fields** (`nao` basis functions, `nmo` linearly independent orbitals, `naux` auxiliary
    functions, `ngrid` grid points, `natom` atoms):

    - `overlap`: AO overlap matrix S, `(nao, nao)`.
    - `core_hamiltonian`: kinetic + nuclear attraction (+ ECP) matrix, `(nao, nao)`, Hartree.
    - `orthogonalizer`: X with Xᵀ S X = 1 (canonical orthogonalisation, eigenvalues of S below
      1e-8 dropped), `(nao, nmo)`.
    - `cderi`: Cholesky-orthogonalised density-fitting tensor B with
      (μν|λσ) ≈ Σ_Q B_Qμν B_Qλσ, `(naux, nao, nao)`, Hartree^½.
    - `ao`: AO values and their x, y, z derivatives on the grid, `(4, ngrid, nao)`.
    - `grid_coords` `(ngrid, 3)` Bohr and `grid_weights` `(ngrid,)` Bohr³: PySCF's molecular grid.
    - `atom_charges` `(natom,)` and `atom_coords` `(natom, 3)` Bohr: nuclei.
    - `nuclear_repulsion`: scalar, Hartree.
    - `n_electrons`: `(n_alpha, n_beta)`, integer array `(2,)`.
    - `initial_density_matrix`: the initial guess, α and β, `(2, nao, nao)`.
    - `dipole_integrals`: ⟨μ|r|ν⟩ about the origin, `(3, nao, nao)`, Bohr.
    - `restricted` (static): `True` for a spin-restricted (closed-shell) calculation.
    - `grid_operators`: optional [`nlxc.AuxiliaryGridOperators`][] (default `None`), maps from
      the orthogonalised auxiliary basis of `cderi` to the grid, `(noperator, ngrid, naux)` each,
      precomputed by PySCF for nonlocal features (local exact exchange, Gaussian-convolved
      densities); built on request with `System.from_pyscf(..., grid_operators=spec)`. They add
      `8 · noperator · ngrid · naux` bytes (H2O def2-SVP, grid level 2: 19.8 MB per operator;
      C6H6: 442 MB per operator).

    **Memory.** With 8-byte floats a System holds about
    `8·(4·ngrid·nao + naux·nao² + 6·nao² + nao·nmo + 4·ngrid + 4·natom)` bytes, dominated by the
    AO values on the grid and the DF tensor. Measured (def2-SVP, def2-universal-jkfit, grid
    level 3): H2O (nao=24, naux=113, ngrid=33 664): 26 MB; C6H6 (nao=114, naux=558,
    ngrid=142 776): 557 MB; the 30-atom adenine–thymine pair of S22 (nao=321, naux=1641,
    ngrid=372 686): 4.96 GB, with a peak of 5.8 GB resident while building (AOs and the DF tensor
    are written block by block into the final buffers).
    `benchmarks/system_memory.py` prints these numbers for any molecule.
    """

    overlap: Float[Array, "nao nao"]
    core_hamiltonian: Float[Array, "nao nao"]
    orthogonalizer: Float[Array, "nao nmo"]
    cderi: Float[Array, "naux nao nao"]
    ao: Float[Array, "4 ngrid nao"]
    grid_coords: Float[Array, "ngrid 3"]
    grid_weights: Float[Array, " ngrid"]
    atom_charges: Float[Array, " natom"]
    atom_coords: Float[Array, "natom 3"]
    nuclear_repulsion: Float[Array, ""]
    n_electrons: Int[Array, "2"]
    initial_density_matrix: Float[Array, "2 nao nao"]
    dipole_integrals: Float[Array, "3 nao nao"]
    restricted: bool = eqx.field(static=True)
    grid_operators: AuxiliaryGridOperators | None = None

    @property
    def nao(self) -> int:
        """Number of atomic orbitals (basis functions)."""
        return self.overlap.shape[-1]

    @property
    def nmo(self) -> int:
        """Number of linearly independent molecular orbitals."""
        return self.orthogonalizer.shape[-1]

    @property
    def ngrid(self) -> int:
        """Number of grid points."""
        return self.grid_weights.shape[-1]

    @property
    def naux(self) -> int:
        """Number of (Cholesky-orthogonalised) auxiliary basis functions."""
        return self.cderi.shape[-3]

    @classmethod
    def from_pyscf(
        cls,
        mol,
        *,
        grid_level: int = 3,
        auxbasis=None,
        restricted: bool | None = None,
        init_guess: str = "minao",
        block_size: int = 20000,
        grids=None,
        grid_operators: GridOperatorSpec | None = None,
    ) -> System:
        """Build a System from a PySCF `gto.Mole`.

        **Arguments:**

        - `mol`: a built `pyscf.gto.Mole` (after `mol.build()`).
        - `grid_level`: PySCF's grid level, an integer 0–9, as `mf.grids.level`; ignored if
          `grids` is given.
        - `auxbasis`: auxiliary basis for density fitting: a basis name (or a dict element →
          name, as PySCF takes it). `None` picks PySCF's default (`pyscf.df.make_auxbasis`,
          i.e. def2-universal-jkfit for def2 bases), exactly what `mf.density_fit()` uses.
        - `restricted`: spin-restricted (closed-shell) or unrestricted; default: restricted iff
          `mol.spin == 0`.
        - `init_guess`: `"minao"` (PySCF's superposition of atomic densities) or `"core"`
          (diagonalise the core Hamiltonian).
        - `block_size`: number of grid points per block when evaluating AOs (bounds the
          temporary memory of PySCF's AO evaluation).
        - `grids`: an already built `pyscf.dft.gen_grid.Grids` to use instead of `grid_level`.
        - `grid_operators`: a [`nlxc.GridOperatorSpec`][] naming the auxiliary-basis grid
          operators to precompute (Coulomb/long-range potentials for local exact exchange,
          Gaussian smoothing and L²-projection for density descriptors); usually a model's
          `required_grid_operators`. `None` (default) stores none.

        **Returns:** a `System`.

        **Raises:** [`nlxc.InputError`][] (one line, before any integral is computed, except
        the orbital count) when `mol` is not a `pyscf.gto.Mole` or was not built; for a
        `grid_level` that is not an integer 0–9; for a charge/spin inconsistent with the
        electron count; when a spin channel has more electrons than the basis has linearly
        independent orbitals; for an unknown auxiliary basis (naming it, with the closest
        known name) or one without functions for an element; for an unknown `init_guess`, a
        `block_size` that is not a positive integer, `restricted=True` for an open-shell
        molecule, or a `grid_operators` that is not a `GridOperatorSpec`.
        """
        from pyscf import df, dft, gto, lib, scf

        if not isinstance(mol, gto.Mole):
            raise InputError(f"expected a built pyscf.gto.Mole, got {type(mol).__name__}")
        if mol.natm == 0 or mol.nbas == 0:
            raise InputError("the pyscf.gto.Mole has no atoms or no basis functions: call mol.build() first")
        if isinstance(grid_level, bool) or not isinstance(grid_level, (int, np.integer)) \
                or not 0 <= grid_level <= MAX_GRID_LEVEL:
            raise InputError(f"grid_level must be an integer between 0 and {MAX_GRID_LEVEL}, got {grid_level!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise InputError(f"block_size must be a positive integer, got {block_size!r}")
        if restricted is not None and not isinstance(restricted, (bool, np.bool_)):
            raise InputError(f"restricted must be True, False or None, got {restricted!r}")
        n_total = mol.nelectron
        if n_total <= 0:
            raise InputError(f"charge {mol.charge} leaves {n_total} electrons")
        if abs(mol.spin) > n_total or (n_total - mol.spin) % 2:
            raise InputError(f"spin 2S={mol.spin} is inconsistent with {n_total} electrons (charge {mol.charge})")
        if restricted is None:
            restricted = mol.spin == 0
        if restricted and mol.spin != 0:
            raise InputError(f"a restricted calculation needs a closed shell, but 2S = {mol.spin}")
        if init_guess not in ("minao", "core"):
            raise InputError(f"unknown initial guess {init_guess!r}; use 'minao' or 'core'")
        if grid_operators is not None and not isinstance(grid_operators, GridOperatorSpec):
            raise InputError(f"grid_operators must be a nlxc.GridOperatorSpec or None, got {type(grid_operators).__name__}")
        symbols = [mol.atom_pure_symbol(i) for i in range(mol.natm)]
        if isinstance(auxbasis, dict):
            for element, name in auxbasis.items():
                if isinstance(name, str):
                    check_basis(name, symbols if element == "default" else [element], kind="auxiliary basis")
        elif isinstance(auxbasis, str):
            check_basis(auxbasis, symbols, kind="auxiliary basis")

        overlap = mol.intor_symmetric("int1e_ovlp")
        s_eig, s_vec = np.linalg.eigh(overlap)
        keep = s_eig > 1e-8
        nmo = int(np.count_nonzero(keep))
        for n, channel in zip(mol.nelec, ("alpha", "beta")):
            if n > nmo:
                basis = f"basis {mol.basis}" if isinstance(mol.basis, str) else "the basis"
                independent = "" if nmo == mol.nao else " linearly independent"
                raise InputError(f"{n} {channel} electrons but only {nmo}{independent} orbitals in {basis} "
                                 f"(charge {mol.charge}, 2S={mol.spin})")
        orthogonalizer = s_vec[:, keep] / np.sqrt(s_eig[keep])
        hcore = scf.hf.get_hcore(mol)

        if auxbasis is None:
            with quiet_basis_lookup():  # make_auxbasis probes basis files and falls back to ETB
                auxbasis = df.make_auxbasis(mol)
        cderi_packed = df.incore.cholesky_eri(mol, auxbasis=auxbasis, aosym="s2ij", verbose=0)
        naux = cderi_packed.shape[0]
        cderi = jnp.zeros((naux, mol.nao, mol.nao))
        aux_block = max(1, block_size * 4 // max(mol.nao, 1))
        for start in range(0, naux, aux_block):
            block = lib.unpack_tril(cderi_packed[start : start + aux_block])
            cderi = _write_block(cderi, block, start, 0)
        del cderi_packed

        if grids is None:
            grids = dft.gen_grid.Grids(mol)
            grids.level = grid_level
            grids.build(with_non0tab=False)
        nonzero = grids.weights != 0  # PySCF pads grids with zero-weight points
        coords = np.ascontiguousarray(grids.coords[nonzero])
        weights = np.ascontiguousarray(grids.weights[nonzero])
        ngrid, nao = len(weights), mol.nao
        # Fill the device buffer block by block (in place, by buffer donation), so that PySCF's
        # AO evaluation never holds more than one block and no second full copy is made.
        ao = jnp.zeros((4, ngrid, nao))
        for start in range(0, ngrid, block_size):
            stop = min(start + block_size, ngrid)
            ao = _write_block(ao, dft.numint.eval_ao(mol, coords[start:stop], deriv=1), start, 1)

        if init_guess == "minao":
            dm = scf.hf.init_guess_by_minao(mol)
            dm0 = np.stack([dm / 2, dm / 2])
        else:
            import scipy.linalg

            _, c = scipy.linalg.eigh(hcore, overlap)
            na, nb = mol.nelec
            dm0 = np.stack([c[:, :na] @ c[:, :na].T, c[:, :nb] @ c[:, :nb].T])

        with mol.with_common_orig((0.0, 0.0, 0.0)):
            dipole = mol.intor_symmetric("int1e_r", comp=3)

        operators = None
        if grid_operators is not None:
            operators = build_grid_operators(mol, coords, grid_operators, auxbasis=auxbasis, cderi=cderi,
                                             block_size=block_size)

        return cls(
            overlap=jnp.asarray(overlap),
            core_hamiltonian=jnp.asarray(hcore),
            orthogonalizer=jnp.asarray(orthogonalizer),
            cderi=cderi,
            ao=ao,
            grid_coords=jnp.asarray(coords),
            grid_weights=jnp.asarray(weights),
            atom_charges=jnp.asarray(mol.atom_charges(), dtype=float),
            atom_coords=jnp.asarray(mol.atom_coords(unit="Bohr")),
            nuclear_repulsion=jnp.asarray(mol.energy_nuc()),
            n_electrons=jnp.asarray(mol.nelec, dtype=int),
            initial_density_matrix=jnp.asarray(dm0),
            dipole_integrals=jnp.asarray(dipole),
            restricted=bool(restricted),
            grid_operators=operators,
        )

    @classmethod
    def from_xyz(cls, path: str | os.PathLike, basis: str, *, charge: int = 0, spin: int = 0,
                 **kwargs) -> System:
        """Build a System from a standard XYZ file (coordinates in Ångström).

        `charge` is the total charge, `spin` is 2S = N_α − N_β (PySCF's convention); other
        keyword arguments go to [`System.from_pyscf`][nlxc.System.from_pyscf].

        **Raises:** [`nlxc.InputError`][] for a missing, unreadable or ill-formed file (naming
        the file and line; see `nlxc.system.read_xyz`), an unknown element or
        basis, a charge/spin inconsistent with the electron count, atoms closer than 0.1 Å,
        and as [`System.from_pyscf`][nlxc.System.from_pyscf] raises.
        """
        return cls.from_pyscf(mole_from_xyz(path, basis, charge=charge, spin=spin), **kwargs)

    @classmethod
    def from_ase(cls, atoms, basis: str, *, charge: int = 0, spin: int = 0, **kwargs) -> System:
        """Build a System from an `ase.Atoms` (positions in Ångström).

        Arguments and errors as for [`System.from_xyz`][nlxc.System.from_xyz].
        """
        geometry = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())]
        return cls.from_pyscf(build_mole(geometry, basis, charge=charge, spin=spin), **kwargs)


def build_mole(
    geometry: Sequence[tuple[str, Sequence[float]]],
    basis: str,
    *,
    charge: int = 0,
    spin: int = 0,
    unit: str = "Angstrom",
):
    """Validate a geometry and build a PySCF `Mole` from it.

    **Arguments:**

    - `geometry`: `[(element symbol, (x, y, z)), ...]`.
    - `basis`: a basis-set name PySCF knows (e.g. `"def2-svp"`).
    - `charge`: total charge. `spin`: 2S = N_α − N_β.
    - `unit`: `"Angstrom"` (default) or `"Bohr"`.

    **Returns:** a built `pyscf.gto.Mole` with `verbose=0`.

    **Raises:** [`nlxc.InputError`][] (one line, naming the problem) for: no atoms, an unknown
    element, non-finite coordinates, two atoms closer than 0.1 Å, a charge/spin inconsistent
    with the number of electrons, an unknown basis (with the closest known name) or one without
    functions for an element.
    """
    from pyscf import gto
    from pyscf.data import elements
    from pyscf.lib.exceptions import BasisNotFoundError

    if len(geometry) == 0:
        raise InputError("the geometry has no atoms")
    symbols, coords = [], []
    for symbol, xyz in geometry:
        label = str(symbol).strip()
        normal = label[:1].upper() + label[1:].lower()
        if normal not in elements.ELEMENTS[1:]:
            raise InputError(f"unknown element {label!r}")
        xyz = np.asarray(xyz, dtype=float)
        if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
            raise InputError(f"atom {label} has invalid coordinates {xyz.tolist()}")
        symbols.append(normal)
        coords.append(xyz)
    coords = np.array(coords)
    to_angstrom = 1.0 if unit.lower().startswith("a") else 1.0 / ANGSTROM_TO_BOHR
    if len(coords) > 1:
        d = np.linalg.norm(coords[:, None] - coords[None], axis=-1) * to_angstrom
        d[np.diag_indices(len(coords))] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < MIN_ATOM_DISTANCE_ANGSTROM:
            raise InputError(
                f"atoms {i + 1} ({symbols[i]}) and {j + 1} ({symbols[j]}) are {d[i, j]:.3g} Å apart "
                f"(closer than {MIN_ATOM_DISTANCE_ANGSTROM} Å)"
            )
    n_electrons = sum(elements.charge(s) for s in symbols) - int(charge)
    if n_electrons <= 0:
        raise InputError(f"charge {charge} leaves {n_electrons} electrons")
    if spin < 0 or spin > n_electrons or (n_electrons - spin) % 2:
        raise InputError(
            f"spin 2S={spin} is inconsistent with {n_electrons} electrons (charge {charge})"
        )
    check_basis(basis, symbols)
    try:
        with quiet_basis_lookup():
            mol = gto.M(
                atom=[(s, tuple(c)) for s, c in zip(symbols, coords)],
                basis=basis,
                charge=int(charge),
                spin=int(spin),
                unit=unit,
                verbose=0,
            )
    except BasisNotFoundError as err:  # basis text (not a name) that PySCF cannot parse
        detail = " ".join(str(err).split())
        raise InputError(f"unknown basis {basis!r} for {'/'.join(sorted(set(symbols)))}: {detail}") from None
    if mol.nao == 0:
        raise InputError(f"basis {basis!r} has no functions for these elements")
    return mol


def read_xyz(path: str | os.PathLike) -> list[tuple[str, tuple[float, float, float]]]:
    """Read a standard (single-frame) XYZ file.

    The format: line 1 the number of atoms N, line 2 a comment, then N lines
    `symbol x y z` (Ångström; further columns are ignored; the symbol is matched
    case-insensitively, an atomic number is also accepted). Blank lines at the end are ignored;
    any other line after the N atoms is an error (a multi-frame file is refused).

    **Returns:** `[(element symbol, (x, y, z)), ...]` in Ångström, as
    [`build_mole`][nlxc.system.build_mole] takes it.

    **Raises:** [`nlxc.InputError`][] (one line, naming the file and, for a malformed file, the
    line) for a missing file, a directory, an unreadable or non-text file, an empty file, a
    first line that is not a positive atom count, fewer atom lines than that count, a line
    that is not `symbol x y z` with numeric, finite coordinates, an unknown element, or extra
    lines after the atoms.
    """
    from pyscf.data import elements

    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not an XYZ file")
    if not os.path.exists(path):
        raise InputError(f"cannot read {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a valid XYZ file: it is not UTF-8 text") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    bad = f"{path} is not a valid XYZ file"
    if not lines:
        raise InputError(f"{bad}: the file is empty")
    try:
        n_atoms = int(lines[0].strip())
    except ValueError:
        raise InputError(f"{bad}: line 1 should be the number of atoms, got {lines[0].strip()!r}") from None
    if n_atoms < 1:
        raise InputError(f"{bad}: line 1 should be a positive number of atoms, got {n_atoms}")
    found = max(len(lines) - 2, 0)
    if found < n_atoms:
        raise InputError(f"{bad}: line 1 says {n_atoms} atoms but only {found} atom line"
                         f"{'' if found == 1 else 's'} follow")
    geometry = []
    for number, line in enumerate(lines[2 : 2 + n_atoms], start=3):
        tokens = line.split()
        if len(tokens) < 4:
            raise InputError(f"{bad}: line {number} should be 'symbol x y z', got {line.strip()!r}")
        label = tokens[0]
        if label.isdigit():
            z = int(label)
            symbol = elements.ELEMENTS[z] if 1 <= z < len(elements.ELEMENTS) else label
        else:
            symbol = label[:1].upper() + label[1:].lower()
        if symbol not in elements.ELEMENTS[1:]:
            raise InputError(f"{bad}: line {number}: unknown element {label!r}")
        try:
            xyz = tuple(float(t) for t in tokens[1:4])
        except ValueError:
            raise InputError(f"{bad}: line {number} has a non-numeric coordinate: {line.strip()!r}") from None
        if not all(np.isfinite(xyz)):
            raise InputError(f"{bad}: line {number} has a non-finite coordinate: {line.strip()!r}")
        geometry.append((symbol, xyz))
    for number, line in enumerate(lines[2 + n_atoms :], start=3 + n_atoms):
        if line.strip():
            raise InputError(f"{bad}: line {number} follows the {n_atoms} atom{'' if n_atoms == 1 else 's'} "
                             "of line 1 (a wrong atom count, or several frames?)")
    return geometry


def mole_from_xyz(path: str | os.PathLike, basis: str, *, charge: int = 0, spin: int = 0):
    """Read a standard XYZ file (Ångström) and build a validated PySCF `Mole`.

    The file (read by `nlxc.system.read_xyz`): line 1 the number of atoms N, line 2 a comment,
    then N lines `symbol x y z` in Ångström (further columns ignored); one frame only.

    **Raises:** [`nlxc.InputError`][] (one line) as [`build_mole`][nlxc.system.build_mole]
    does, and, naming the file (and the line), for a missing file, a directory, an unreadable
    or non-text file, an empty file, a first line that is not a positive atom count, fewer atom
    lines than that count, an atom line that is not `symbol x y z` with finite numbers, an
    unknown element, or lines after the N atoms.
    """
    return build_mole(read_xyz(path), basis, charge=charge, spin=spin)


def pad_system(
    system: System,
    *,
    nao: int | None = None,
    naux: int | None = None,
    ngrid: int | None = None,
    natom: int | None = None,
    host: bool = False,
) -> System:
    """Pad a System to larger shapes without changing its SCF.

    Systems of equal shapes can be stacked (`jax.tree.map(jnp.stack, ...)`) and solved under one
    compilation with `jax.vmap`. Padding keeps the physics unchanged:

    - padded basis functions have zero rows in the orthogonaliser, so they never enter an
      orbital; the padded orbitals are pushed up by `PADDED_ORBITAL_ENERGY` (Hartree) so they are
      never occupied (their overlap block is the identity, their integrals zero);
    - padded auxiliary functions have a zero DF tensor;
    - padded grid points have weight zero and zero AO values (so zero density);
    - padded atoms have zero charge;
    - the grid operators (if any) are zero on padded grid points and auxiliary functions.

    **Arguments:** the target sizes (each at least the current one; `None` keeps it).
    `nmo` grows by as much as `nao`. With `host=True` the padded arrays are left as NumPy
    arrays in host memory (for stacking many Systems before one transfer to the device).

    **Returns:** the padded `System`.

    **Raises:** `ValueError` if a target is smaller than the current size.
    """
    cur = {"nao": system.nao, "naux": system.naux, "ngrid": system.ngrid, "natom": system.atom_charges.shape[0]}
    new = {k: cur[k] if v is None else int(v) for k, v in
           {"nao": nao, "naux": naux, "ngrid": ngrid, "natom": natom}.items()}
    for k in cur:
        if new[k] < cur[k]:
            raise ValueError(f"cannot pad {k} from {cur[k]} down to {new[k]}")
    dao, daux, dgrid, datom = (new[k] - cur[k] for k in ("nao", "naux", "ngrid", "natom"))
    nmo = system.nmo + dao
    # Concrete arrays are padded with NumPy on the host (one device transfer per array instead
    # of many small dispatched ops); traced ones (inside jit) with jax.numpy.
    xp = jnp if isinstance(system.overlap, jax.core.Tracer) else np

    def pad(x, widths):
        return xp.pad(xp.asarray(x), widths)

    overlap = pad(system.overlap, ((0, dao), (0, dao)))
    eye = xp.eye(dao, dtype=overlap.dtype)
    if xp is np:
        overlap[system.nao :, system.nao :] = eye
    else:
        overlap = overlap.at[system.nao :, system.nao :].set(eye)
    fields = dict(
        overlap=overlap,
        core_hamiltonian=pad(system.core_hamiltonian, ((0, dao), (0, dao))),
        orthogonalizer=pad(system.orthogonalizer, ((0, dao), (0, nmo - system.nmo))),
        cderi=pad(system.cderi, ((0, daux), (0, dao), (0, dao))),
        ao=pad(system.ao, ((0, 0), (0, dgrid), (0, dao))),
        grid_coords=pad(system.grid_coords, ((0, dgrid), (0, 0))),
        grid_weights=pad(system.grid_weights, ((0, dgrid),)),
        atom_charges=pad(system.atom_charges, ((0, datom),)),
        atom_coords=pad(system.atom_coords, ((0, datom), (0, 0))),
        nuclear_repulsion=xp.asarray(system.nuclear_repulsion),
        n_electrons=xp.asarray(system.n_electrons),
        initial_density_matrix=pad(system.initial_density_matrix, ((0, 0), (0, dao), (0, dao))),
        dipole_integrals=pad(system.dipole_integrals, ((0, 0), (0, dao), (0, dao))),
    )
    operators = None
    if system.grid_operators is not None:
        operators = system.grid_operators.pad(ngrid=new["ngrid"], naux=new["naux"], xp=xp)
    if xp is np and not host:
        fields = {k: jnp.asarray(v) for k, v in fields.items()}
        if operators is not None:
            operators = jax.tree.map(jnp.asarray, operators)
    return System(**fields, restricted=system.restricted, grid_operators=operators)


def pad_to_common_shape(systems: Sequence[System]) -> list[System]:
    """Pad Systems to the largest `nao`, `naux`, `ngrid` and atom count among them."""
    sizes = {
        "nao": max(s.nao for s in systems),
        "naux": max(s.naux for s in systems),
        "ngrid": max(s.ngrid for s in systems),
        "natom": max(s.atom_charges.shape[0] for s in systems),
    }
    return [pad_system(s, **sizes) for s in systems]
