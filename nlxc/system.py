"""`System`: a molecule, its basis, grid and integrals as a pytree of arrays.

PySCF computes everything here once, in numpy; downstream everything is JAX.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._errors import InputError
from .grid_operators import AuxiliaryGridOperators, GridOperatorSpec, build_grid_operators

ANGSTROM_TO_BOHR = 1.0 / 0.52917721092  # PySCF's param.BOHR (CODATA 2010)
MIN_ATOM_DISTANCE_ANGSTROM = 0.1


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

        - `mol`: a built `pyscf.gto.Mole`.
        - `grid_level`: PySCF's grid level (0–9), as `mf.grids.level`; ignored if `grids` is given.
        - `auxbasis`: auxiliary basis for density fitting. `None` picks PySCF's default
          (`pyscf.df.make_auxbasis`, i.e. def2-universal-jkfit for def2 bases), exactly what
          `mf.density_fit()` uses.
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

        **Raises:** [`nlxc.InputError`][] for an unknown `init_guess`, when `restricted=True`
        is asked for an open-shell molecule, or for a `grid_operators` that is not a
        `GridOperatorSpec`.
        """
        from pyscf import df, dft, lib, scf

        if restricted is None:
            restricted = mol.spin == 0
        if restricted and mol.spin != 0:
            raise InputError(f"a restricted calculation needs a closed shell, but 2S = {mol.spin}")
        if init_guess not in ("minao", "core"):
            raise InputError(f"unknown initial guess {init_guess!r}; use 'minao' or 'core'")
        if grid_operators is not None and not isinstance(grid_operators, GridOperatorSpec):
            raise InputError(f"grid_operators must be a nlxc.GridOperatorSpec or None, got {type(grid_operators).__name__}")

        overlap = mol.intor_symmetric("int1e_ovlp")
        hcore = scf.hf.get_hcore(mol)
        s_eig, s_vec = np.linalg.eigh(overlap)
        keep = s_eig > 1e-8
        orthogonalizer = s_vec[:, keep] / np.sqrt(s_eig[keep])

        if auxbasis is None:
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

        **Raises:** [`nlxc.InputError`][] for an unreadable or ill-formed file, an unknown
        element or basis, a charge/spin inconsistent with the electron count, or atoms closer
        than 0.1 Å.
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
    with the number of electrons, an unknown basis.
    """
    from pyscf import gto
    from pyscf.data import elements

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
    try:
        mol = gto.M(
            atom=[(s, tuple(c)) for s, c in zip(symbols, coords)],
            basis=basis,
            charge=int(charge),
            spin=int(spin),
            unit=unit,
            verbose=0,
        )
    except Exception as err:  # PySCF raises KeyError/RuntimeError/BasisNotFoundError
        raise InputError(f"unknown basis {basis!r} for {'/'.join(sorted(set(symbols)))}") from err
    if mol.nao == 0:
        raise InputError(f"basis {basis!r} has no functions for these elements")
    return mol


def mole_from_xyz(path: str | os.PathLike, basis: str, *, charge: int = 0, spin: int = 0):
    """Read a standard XYZ file (Ångström) with ASE and build a validated PySCF `Mole`.

    **Raises:** [`nlxc.InputError`][] as [`build_mole`][nlxc.system.build_mole] does, and for a
    missing, unreadable or ill-formed file.
    """
    import ase.io

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"cannot read {path}: no such file")
    try:
        atoms = ase.io.read(path, format="xyz")
    except KeyError as err:  # ASE's way of saying "unknown chemical symbol"
        raise InputError(f"{path}: unknown element {err.args[0]!r}") from err
    except Exception as err:
        detail = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        raise InputError(f"{path} is not a valid XYZ file ({detail})") from err
    geometry = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())]
    return build_mole(geometry, basis, charge=charge, spin=spin)


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
