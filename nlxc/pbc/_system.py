"""A crystal as arrays: Bloch-basis integrals per k-point, density fitting, the grid (private)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Complex, Float

from .._errors import InputError

# Overlap eigenvalues below this (relative to the largest) are dropped by the canonical
# orthogonalisation of each k-point (PySCF's default linear-dependency threshold is similar).
LINEAR_DEPENDENCE_THRESHOLD = 1e-9


class PeriodicSystem(eqx.Module):
    """A k-point-sampled crystal in a Gaussian (Bloch) basis, as JAX arrays (atomic units).

    Everything PySCF's periodic code (`pyscf.pbc`) provides for a Kohn–Sham calculation with
    `pyscf.pbc.dft.KRKS(cell, kpts).density_fit()` (or `KUKS`), taken from PySCF once and held as
    arrays, so that [`nlxc.pbc.solve`][] is a pure, jit-able function of it. Shapes: `nk`
    k-points, `nao` Bloch basis functions per cell, `naux` density-fitting vectors, `ngrid` grid
    points in the cell. Energies are per cell.

    - `kpts`: absolute k-points, `(nk, 3)`, 1/Bohr; `kpt_weights`: `(nk,)`, each 1/nk.
    - `overlap`, `core_hamiltonian`: S_k and H_k = T_k + V_pp,k (kinetic + GTH pseudopotential,
      local part by PySCF's GDF), `(nk, nao, nao)` complex128, Hartree.
    - `orthogonalizer`: canonical orthogonalisation X_k = U s^(-1/2) of each S_k, `(nk, nao, nao)`;
      columns of dropped (linearly dependent) directions are zero.
    - `cderi`: the Gaussian density-fitting (GDF) Cholesky vectors L^k_{Q,μν} of the (k, k)
      pair densities as PySCF's `GDF.sr_loop` yields them (with PySCF's treatment of the G = 0
      term), `(nk, naux, nao, nao)` complex128; `cderi_sign`: `(naux,)`, +1, or −1 for the
      negative part PySCF keeps for 2D cells. The Hartree energy is
      ½ Σ_Q sign_Q (Σ_k w_k tr L^k_Q P_k)². Sun, Berkelbach, McClain, Chan, J. Chem. Phys. 147,
      164119 (2017), doi:10.1063/1.4998644.
    - `ao_values`: Bloch AOs φ^k_μ(r) = Σ_T e^{ik·T} χ_μ(r − T) and their gradients on the grid,
      `(nk, 4, ngrid, nao)` complex128 (value, ∂x, ∂y, ∂z; 1/Bohr^{3/2}, 1/Bohr^{5/2}).
    - `grid_coords`: `(ngrid, 3)` Bohr, `grid_weights`: `(ngrid,)` Bohr³: PySCF's grid of the
      KS object (its default `BeckeGrids` in PySCF 2.14, or `UniformGrids`).
    - `nuclear_repulsion`: the Ewald energy of the ion cores, `cell.energy_nuc()`, Hartree per cell.
    - `n_electrons`: valence electrons per cell (α, β), `(2,)` float: ((N + 2S)/2, (N − 2S)/2),
      or (N/2, N/2) for a restricted system, half-integers for an odd N (a metal: it needs
      smearing, see [`nlxc.pbc.solve`][]).
    - `lattice_vectors`: `(3, 3)` Bohr, rows a₁, a₂, a₃; `atom_coords` `(natom, 3)` Bohr;
      `atom_charges` `(natom,)` nuclear charges Z (as in a molecular [`nlxc.System`][]: the
      element identity; the pseudo-ion charges are Z minus PySCF's `cell.atom_nelec_core(i)`).
    - `initial_density_matrix`: PySCF's initial guess (α, β), `(2, nk, nao, nao)` complex128.
    - `restricted`: closed shell solved with Pα = Pβ (static).

    Build it with [`PeriodicSystem.from_cell`][nlxc.pbc.PeriodicSystem.from_cell] or
    [`PeriodicSystem.from_pyscf`][nlxc.pbc.PeriodicSystem.from_pyscf].
    """

    kpts: Float[Array, "nk 3"]
    kpt_weights: Float[Array, " nk"]
    overlap: Complex[Array, "nk nao nao"]
    core_hamiltonian: Complex[Array, "nk nao nao"]
    orthogonalizer: Complex[Array, "nk nao nmo"]
    cderi: Complex[Array, "nk naux nao nao"]
    cderi_sign: Float[Array, " naux"]
    ao_values: Complex[Array, "nk 4 ngrid nao"]
    grid_coords: Float[Array, "ngrid 3"]
    grid_weights: Float[Array, " ngrid"]
    nuclear_repulsion: Float[Array, ""]
    n_electrons: Float[Array, 2]
    lattice_vectors: Float[Array, "3 3"]
    atom_coords: Float[Array, "natom 3"]
    atom_charges: Float[Array, " natom"]
    initial_density_matrix: Complex[Array, "2 nk nao nao"]
    restricted: bool = eqx.field(static=True)

    @property
    def nk(self) -> int:
        """The number of k-points."""
        return self.kpts.shape[0]

    @property
    def nao(self) -> int:
        """The number of Bloch basis functions per cell."""
        return self.overlap.shape[-1]

    @property
    def nmo(self) -> int:
        """The number of orbitals per k-point (= nao; dropped directions are padded)."""
        return self.orthogonalizer.shape[-1]

    @property
    def ngrid(self) -> int:
        """The number of grid points in the cell."""
        return self.grid_weights.shape[0]

    @property
    def naux(self) -> int:
        """The number of density-fitting vectors."""
        return self.cderi.shape[1]

    @property
    def volume(self) -> Float[Array, ""]:
        """The cell volume, Bohr³."""
        return jnp.abs(jnp.linalg.det(self.lattice_vectors))

    @classmethod
    def from_cell(
        cls,
        cell: Any,
        kmesh: Sequence[int] = (1, 1, 1),
        *,
        kpts: Any = None,
        restricted: bool | None = None,
        with_df: Any = None,
    ) -> PeriodicSystem:
        """Build the arrays of a `pyscf.pbc.gto.Cell` on a Monkhorst–Pack k-mesh.

        **Arguments:**

        - `cell`: a built `pyscf.pbc.gto.Cell` with a basis and a pseudopotential (e.g.
          `basis="gth-szv", pseudo="gth-pade"`); its `spin` is 2S per cell (PySCF's `KUKS`
          reads it per k-point supercell; see [`from_pyscf`][nlxc.pbc.PeriodicSystem.from_pyscf]).
        - `kmesh`: three positive integers; the k-points are PySCF's `cell.make_kpts(kmesh)`
          (Γ-centred Monkhorst–Pack, Γ included; `(1, 1, 1)` is the Γ point alone).
        - `kpts`: explicit absolute k-points `(nk, 3)` in 1/Bohr instead of `kmesh`.
        - `restricted`: `None` (restricted when `cell.spin == 0`), or `False` to solve a closed
          shell spin-polarised (`KUKS`); `True` needs `cell.spin == 0`.
        - `with_df`: an existing `pyscf.pbc.df.GDF` of this cell and these k-points to reuse
          (e.g. `mf.with_df` of a PySCF reference calculation); default: a new GDF.

        The grid is the default of PySCF's `KRKS`/`KUKS` for the cell (`mf.grids`), the core
        Hamiltonian `mf.get_hcore()`, the guess `mf.get_init_guess()` (MINAO).

        **Raises:** [`nlxc.InputError`][] for a `cell` that is not a built `pyscf.pbc.gto.Cell`,
        a `kmesh` that is not three positive integers, or `restricted=True` with `cell.spin != 0`.
        """
        from pyscf.pbc import dft, gto

        if not isinstance(cell, gto.Cell):
            raise InputError(f"from_cell needs a pyscf.pbc.gto.Cell, got {type(cell).__name__}")
        if cell._built is False or cell._atm is None or len(cell._atm) == 0:
            raise InputError("the Cell is not built: call cell.build() first")
        if kpts is None:
            mesh = tuple(kmesh)
            if len(mesh) != 3 or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0
                                         for n in mesh):
                raise InputError(f"kmesh must be three positive integers, got {kmesh!r}")
            kpts = cell.make_kpts([int(n) for n in mesh])
        kpts = np.asarray(kpts, dtype=float).reshape(-1, 3)
        if restricted is None:
            restricted = cell.spin == 0
        if restricted and cell.spin != 0:
            raise InputError(f"restricted=True needs a closed shell (cell.spin == 0), got spin {cell.spin}")
        mf = (dft.KRKS if restricted else dft.KUKS)(cell, kpts).density_fit()
        if with_df is not None:
            mf.with_df = with_df
        return cls.from_pyscf(mf)

    @classmethod
    def from_pyscf(cls, mf: Any) -> PeriodicSystem:
        """The arrays of a PySCF k-point Kohn–Sham object with Gaussian density fitting.

        `mf` is a `pyscf.pbc.dft.KRKS` (restricted) or `KUKS` (spin-polarised) made with
        `.density_fit()`; its cell, k-points, GDF object (`mf.with_df`, built here if needed),
        grid (`mf.grids`) and initial guess are used, so a PySCF reference and the nlxc solve
        share them. The functional (`mf.xc`) is not read.

        Spin: `cell.spin` is 2S **per cell** here. PySCF's `KUKS` reads `cell.spin` as 2S of the
        whole k-point sample (Born–von Kármán supercell) instead; to solve the same state in
        PySCF set `mf.nelec = (nα·nk, nβ·nk)`. When `mf.nelec` is set explicitly, it is read
        (divided by nk).

        **Raises:** [`nlxc.InputError`][] for an object that is not a k-point KS object with
        GDF.
        """
        from pyscf.pbc import df as pbc_df
        from pyscf.pbc import dft

        if not isinstance(mf, (dft.krks.KRKS, dft.kuks.KUKS)):
            raise InputError(f"from_pyscf needs a pyscf.pbc.dft.KRKS or KUKS object, got {type(mf).__name__}")
        if not isinstance(mf.with_df, pbc_df.GDF):
            raise InputError(f"from_pyscf needs Gaussian density fitting (mf.density_fit()), got "
                             f"{type(mf.with_df).__name__}")
        cell = mf.cell
        restricted = not isinstance(mf, dft.kuks.KUKS)
        n_total = float(cell.nelectron)
        kpts = np.asarray(mf.kpts, dtype=float).reshape(-1, 3)
        nk = len(kpts)
        if restricted:
            n_alpha = n_beta = 0.5 * n_total
        elif getattr(mf, "_nelec", None) is not None:  # set explicitly: electrons of all k-points
            n_alpha, n_beta = (float(n) / nk for n in mf._nelec)
        else:
            n_alpha, n_beta = 0.5 * (n_total + cell.spin), 0.5 * (n_total - cell.spin)
        overlap = np.asarray(mf.get_ovlp(cell, kpts), dtype=complex).reshape(nk, cell.nao, cell.nao)
        hcore = np.asarray(mf.get_hcore(cell, kpts), dtype=complex).reshape(nk, cell.nao, cell.nao)
        cderi, sign = _gdf_tensors(mf.with_df, kpts, cell.nao)
        if mf.grids.coords is None:
            mf.grids.build()
        coords = np.asarray(mf.grids.coords, dtype=float)
        weights = np.asarray(mf.grids.weights, dtype=float)
        ao = np.asarray(mf._numint.eval_ao(cell, coords, kpts, deriv=1), dtype=complex)  # (nk, 4, ngrid, nao)
        guess_mf = mf
        if not restricted and getattr(mf, "_nelec", None) is None:
            # PySCF's KUKS would read cell.spin per supercell; guess with the per-cell counts
            guess_mf = mf.copy()
            guess_mf.nelec = (round(n_alpha * nk), round(n_beta * nk))
        guess = np.asarray(guess_mf.get_init_guess(cell, "minao"), dtype=complex)
        if restricted:
            guess = np.stack([0.5 * guess, 0.5 * guess])
        guess = guess.reshape(2, nk, cell.nao, cell.nao)
        guess = 0.5 * (guess + np.conj(np.swapaxes(guess, -1, -2)))
        return cls(
            kpts=jnp.asarray(kpts),
            kpt_weights=jnp.full((nk,), 1.0 / nk),
            overlap=jnp.asarray(overlap),
            core_hamiltonian=jnp.asarray(hcore),
            orthogonalizer=jnp.asarray(_orthogonalizer(overlap)),
            cderi=jnp.asarray(cderi),
            cderi_sign=jnp.asarray(sign),
            ao_values=jnp.asarray(ao),
            grid_coords=jnp.asarray(coords),
            grid_weights=jnp.asarray(weights),
            nuclear_repulsion=jnp.asarray(float(cell.energy_nuc())),
            n_electrons=jnp.asarray([n_alpha, n_beta]),
            lattice_vectors=jnp.asarray(np.asarray(cell.lattice_vectors(), dtype=float)),
            atom_coords=jnp.asarray(np.asarray(cell.atom_coords(), dtype=float)),
            # nuclear charges Z, as a molecular System's (the element identity the models embed);
            # PySCF's cell.atom_charges() are the pseudo-ion (valence) charges Z - core electrons
            atom_charges=jnp.asarray([float(cell.atom_charge(i) + cell.atom_nelec_core(i))
                                      for i in range(cell.natm)]),
            initial_density_matrix=jnp.asarray(guess),
            restricted=restricted,
        )


def _orthogonalizer(overlap: np.ndarray) -> np.ndarray:
    """Canonical orthogonalisation U s^(-1/2) per k-point; dropped directions are zero columns."""
    out = np.zeros_like(overlap)
    for k, s in enumerate(overlap):
        values, vectors = np.linalg.eigh(s)
        keep = values > LINEAR_DEPENDENCE_THRESHOLD * values.max()
        out[k][:, keep] = vectors[:, keep] / np.sqrt(values[keep])
    return out


def _gdf_tensors(with_df: Any, kpts: np.ndarray, nao: int) -> tuple[np.ndarray, np.ndarray]:
    """PySCF's GDF Cholesky vectors of the (k, k) pairs, `(nk, naux, nao, nao)`, and their signs."""
    if with_df._cderi is None:
        with_df.build(j_only=True)
    per_k, signs = [], None
    for kpt in kpts:
        blocks, block_signs = [], []
        for real, imag, sign in with_df.sr_loop(np.asarray((kpt, kpt)), compact=False):
            block = np.asarray(real) + 1j * np.asarray(imag)
            blocks.append(block.reshape(-1, nao, nao))
            block_signs.append(np.full(block.shape[0], float(sign)))
        per_k.append(np.concatenate(blocks))
        these = np.concatenate(block_signs)
        if signs is None:
            signs = these
        elif these.shape != signs.shape or np.any(these != signs):
            raise InputError("the GDF tensors of the k-points have different auxiliary dimensions")
    return np.stack(per_k), signs
