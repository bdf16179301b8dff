"""Use an nlxc functional inside PySCF: a density-fitted RKS/UKS whose exchange–correlation is nlxc's.

```python
import nlxc
from nlxc.interop.pyscf import KS
from pyscf import gto

mol = gto.M(atom="O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692", basis="def2-svp")
mf = KS(mol, nlxc.get_functional("pbe"), grid_level=3)   # like pyscf.dft.KS(mol, xc="pbe")
energy = mf.kernel()                                     # PySCF's SCF loop, DIIS and all
```

The mean-field object is an ordinary PySCF RKS/UKS (density-fitted) in every respect but one: its
`get_veff` evaluates the Coulomb and exchange–correlation energies and potential with JAX from an
[`nlxc.System`][] built from the same `mol`, exactly as [`nlxc.scf.solve`][] does (same grid, same
density-fitting tensor, V_xc = ∂E_xc/∂P by automatic differentiation). Any nlxc functional works:
semilocal, hybrid (exact exchange is part of E_xc), and nonlocal models that read the grid, the
nuclei or the density matrix.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import InputError
from ..grid_operators import GridOperatorSpec
from ..scf import energy_components
from ..system import System, pack_symmetric, quiet_basis_lookup, unpack_tril
from ..xc import AbstractFunctional, required_grid_operators

__all__ = ["KS", "NlxcKS", "required_grid_operators"]

# The value `mf.xc` is set to: not a libxc name, so PySCF code that would evaluate `mf.xc` with
# libxc (instead of calling `mf.get_veff`) fails loudly rather than using another functional.
XC_LABEL = "nlxc"

# Tolerances for recognising that a System was built from a given Mole.
_COORD_TOLERANCE = 1e-8  # Bohr
_OVERLAP_TOLERANCE = 1e-10


@eqx.filter_jit
def _two_electron_part(functional, system, density_matrix):
    """Coulomb and XC energies, their α/β potential and the Coulomb matrix (private).

    `density_matrix` is `(2, nao, nao)`; returns `(E_coul, E_xc, V, J)` with V_σ = ∂(E_coul +
    E_xc)/∂P_σ `(2, nao, nao)` (symmetrised) and J `(nao, nao)`, all in Hartree. The energies are
    nlxc's own [`energy_components`][nlxc.scf.energy_components], so they are those of
    `nlxc.scf.solve` to the last bit.
    """

    def two_electron(p):
        components = energy_components(functional, system, p)
        return components.coulomb + components.xc, components

    (_, components), grad = jax.value_and_grad(two_electron, has_aux=True)(density_matrix)
    potential = 0.5 * (grad + jnp.swapaxes(grad, -1, -2))
    fitted = system.cderi_packed @ pack_symmetric(density_matrix[0] + density_matrix[1])
    coulomb_matrix = unpack_tril(fitted @ system.cderi_packed, system.nao)
    return components.coulomb, components.xc, potential, coulomb_matrix


def _is_empty(spec: GridOperatorSpec) -> bool:
    return not (spec.omegas or spec.exponents or spec.projection)


def _check_functional(functional) -> None:
    if not isinstance(functional, AbstractFunctional):
        raise InputError(
            "functional must be an nlxc.xc.AbstractFunctional (e.g. nlxc.get_functional('pbe')), "
            f"got {type(functional).__name__}"
        )


def _check_mole(mol) -> None:
    from pyscf import gto

    if not isinstance(mol, gto.Mole):
        raise InputError(f"mol must be a pyscf.gto.Mole, got {type(mol).__name__}")
    if hasattr(mol, "lattice_vectors"):  # pyscf.pbc.gto.Cell is a Mole subclass
        raise InputError("periodic cells (pyscf.pbc) are not supported; pass a molecular pyscf.gto.Mole")
    if not getattr(mol, "_built", True):
        raise InputError("mol is not built; call mol.build() (or use gto.M) first")


def _check_system_matches(mol, system: System) -> None:
    """Raise InputError unless `system` was built (unpadded) from `mol`'s atoms and basis."""
    if system.nao != mol.nao_nr():
        raise InputError(
            f"the System has nao={system.nao} but mol has {mol.nao_nr()} basis functions "
            "(a padded System, or another basis); build it with nlxc.System.from_pyscf(mol)"
        )
    charges = np.asarray(mol.atom_charges(), dtype=float)
    coords = np.asarray(mol.atom_coords(unit="Bohr"))
    if np.shape(system.atom_charges) != charges.shape or not np.array_equal(np.asarray(system.atom_charges), charges):
        raise InputError(f"the System's nuclear charges {np.asarray(system.atom_charges).tolist()} "
                         f"differ from mol's {charges.tolist()}")
    if np.max(np.abs(np.asarray(system.atom_coords) - coords), initial=0.0) > _COORD_TOLERANCE:
        raise InputError("the System's atomic coordinates differ from mol's (another geometry)")
    if tuple(int(n) for n in np.asarray(system.n_electrons)) != tuple(mol.nelec):
        raise InputError(f"the System has (n_alpha, n_beta) = {tuple(np.asarray(system.n_electrons).tolist())} "
                         f"but mol has {tuple(mol.nelec)} (charge/spin differ)")
    overlap = mol.intor_symmetric("int1e_ovlp")
    if np.max(np.abs(np.asarray(system.overlap) - overlap)) > _OVERLAP_TOLERANCE:
        raise InputError("the System's overlap matrix differs from mol's (another basis set)")


class NlxcKS:
    """Mixin that makes a PySCF RKS/UKS evaluate its Coulomb and XC terms with an nlxc functional.

    Objects of this kind are made by [`KS`][nlxc.interop.pyscf.KS]; `isinstance(mf, NlxcKS)`
    tells them apart. Attributes besides PySCF's:

    - `functional`: the nlxc functional (not modified; it may be replaced by another functional
      for the same System, which is then prepared on the next `get_veff`).
    - `system`: the [`nlxc.System`][] whose grid and density-fitting tensor are used.
    """

    __name_mixin__ = "Nlxc"
    _keys = {"functional", "system"}

    def __init__(self, mf, functional: AbstractFunctional, system: System):
        self.__dict__.update(mf.__dict__)
        self.functional = functional
        self.system = system
        self.xc = XC_LABEL
        self._nlxc_prepared = None  # (functional, functional.prepare(system))

    # ---- the nlxc part ---------------------------------------------------------------------

    def _prepared_functional(self) -> AbstractFunctional:
        functional = self.functional
        cache = self._nlxc_prepared
        if cache is None or cache[0] is not functional:
            _check_functional(functional)
            cache = self._nlxc_prepared = (functional, functional.prepare(self.system))
        return cache[1]

    def _spin_density_matrices(self, dm) -> np.ndarray:
        """PySCF's density matrix as nlxc's α/β pair `(2, nao, nao)`."""
        from pyscf.scf import uhf

        nao = self.system.nao
        if np.iscomplexobj(dm):
            raise InputError("complex density matrices are not supported by nlxc functionals")
        dm = np.asarray(dm, dtype=float)
        if isinstance(self, uhf.UHF):
            if dm.shape == (nao, nao):  # a total density matrix, split as PySCF's UKS does
                dm = np.stack([dm / 2, dm / 2])
            if dm.shape != (2, nao, nao):
                raise InputError(f"UKS density matrix must have shape (2, {nao}, {nao}), got {dm.shape}")
        else:
            if dm.shape != (nao, nao):
                raise InputError(f"RKS density matrix must have shape ({nao}, {nao}), got {dm.shape}")
            dm = np.stack([dm / 2, dm / 2])
        return 0.5 * (dm + np.swapaxes(dm, -1, -2))

    def get_veff(self, mol=None, dm=None, dm_last=None, vhf_last=None, hermi=1):
        """Coulomb + exchange–correlation potential V = J + ∂E_xc/∂P from the nlxc functional.

        **Arguments** (PySCF's signature; `dm_last` and `vhf_last` are ignored: every call is a
        full build):

        - `mol`: must be `self.mol` or a Mole with the same atoms and basis (default `self.mol`).
        - `dm`: the density matrix, Hartree-free: RKS the total `(nao, nao)`, UKS the α/β pair
          `(2, nao, nao)` (a total `(nao, nao)` is split in halves, as PySCF does); symmetrised
          before use. Default `self.make_rdm1()`.
        - `hermi`: 0 or 1 (the matrix is symmetrised either way); 2 (anti-symmetric) is not
          supported.

        **Returns:** V, `(nao, nao)` for RKS (∂E/∂P_α = ∂E/∂P_β) or `(2, nao, nao)` for UKS,
        Hartree, as a `pyscf.lib.tag_array` with `ecoul` (Hartree energy), `exc` (E_xc, exact
        exchange included), `vj` (Coulomb matrix `(nao, nao)`) and `vk=None`, which PySCF's
        `energy_elec` reads.

        **Raises:** [`nlxc.InputError`][] for a density matrix of the wrong shape or complex,
        a `mol` with other atoms/basis, or a `functional` that is not an nlxc functional;
        `NotImplementedError` for `hermi=2`.
        """
        from pyscf import lib

        if mol is None:
            mol = self.mol
        if mol is not self.mol:
            _check_system_matches(mol, self.system)
        if dm is None:
            dm = self.make_rdm1()
        if hermi == 2:
            raise NotImplementedError("anti-symmetric density matrices (hermi=2) are not supported by nlxc.interop")
        p = self._spin_density_matrices(dm)
        functional = self._prepared_functional()
        ecoul, exc, potential, vj = _two_electron_part(functional, self.system, jnp.asarray(p))
        potential = np.asarray(potential)
        from pyscf.scf import uhf

        veff = potential if isinstance(self, uhf.UHF) else 0.5 * (potential[0] + potential[1])
        return lib.tag_array(veff, ecoul=float(ecoul), exc=float(exc), vj=np.asarray(vj), vk=None)

    # ---- PySCF features that would read mf.xc -----------------------------------------------

    def do_nlc(self):
        """`False`: nonlocal terms belong to the nlxc functional, never to PySCF's VV10."""
        return False

    def do_disp(self, disp=None):
        """`False`; empirical dispersion (`mf.disp`) is not available for nlxc functionals.

        **Raises:** `NotImplementedError` if `mf.disp` (or `disp`) asks for a dispersion correction.
        """
        if disp is None:
            disp = getattr(self, "disp", None)
        if disp is None or disp is False or disp == 0 or disp == "":
            return False
        raise NotImplementedError(
            f"empirical dispersion ({disp!r}) is not available with nlxc functionals; add it to the functional"
        )

    def dump_flags(self, verbose=None):
        from pyscf.dft import rks
        from pyscf.lib import logger

        super(rks.KohnShamDFT, self).dump_flags(verbose)  # the RHF/UHF part, without libxc
        log = logger.new_logger(self, verbose)
        log.info("XC functional = nlxc %s (mf.xc is not used)", type(self.functional).__name__)
        log.info("nlxc System: nao = %d, naux = %d, ngrid = %d, restricted = %s", self.system.nao,
                 self.system.naux, self.system.ngrid, self.system.restricted)
        self.grids.dump_flags(verbose)
        return self

    def reset(self, mol=None):
        """PySCF's reset; a different molecule needs a new object from [`KS`][nlxc.interop.pyscf.KS].

        **Raises:** `NotImplementedError` for a `mol` with other atoms or basis than the System's
        (e.g. PySCF's scanners and geometry optimisers).
        """
        if mol is not None and mol is not self.mol:
            try:
                _check_system_matches(mol, self.system)
            except InputError as err:
                raise NotImplementedError(
                    f"nlxc.interop: a new geometry or basis needs a new mean-field object from "
                    f"nlxc.interop.pyscf.KS ({err})"
                ) from None
        return super().reset(mol)

    def _not_available(self, what):
        raise NotImplementedError(
            f"not available for nlxc functionals in PySCF: {what} (PySCF would evaluate mf.xc with libxc); "
            "use nlxc and JAX for derivatives"
        )

    def nuc_grad_method(self):
        """Not available: **raises** `NotImplementedError` (PySCF's gradients would use libxc)."""
        self._not_available("nuclear gradients (mf.nuc_grad_method / mf.Gradients)")

    Gradients = nuc_grad_method

    def Hessian(self):
        """Not available: **raises** `NotImplementedError`."""
        self._not_available("the nuclear Hessian (mf.Hessian)")

    def gen_response(self, *args, **kwargs):
        """Not available: **raises** `NotImplementedError` (stability analysis, `newton()`, TDDFT, CPHF)."""
        self._not_available("the response function (stability, newton(), TDDFT, CPHF)")


def KS(
    mol,
    functional: AbstractFunctional,
    *,
    system: System | None = None,
    grid_level: int | None = None,
    grids=None,
    auxbasis=None,
    restricted: bool | None = None,
    grid_operators: GridOperatorSpec | None = None,
):
    """A PySCF Kohn–Sham mean-field object whose exchange–correlation is an nlxc functional.

    The analogue of `pyscf.dft.KS(mol, xc=...)`: returns a density-fitted `RKS` or `UKS` on
    which `mf.kernel()`, `mf.e_tot`, `mf.mo_energy`, `mf.mo_coeff`, `mf.make_rdm1()`,
    `mf.analyze()`, `mf.conv_tol`, `mf.max_cycle`, DIIS, level shifts and damping behave as usual.
    Only `get_veff` differs: the Coulomb energy ½ Σ_Q (Σ_μν B_Qμν P_μν)² and E_xc[P] (any exact
    exchange included), and their potential ∂E/∂P (automatic differentiation, compiled once with
    `jax.jit`), are evaluated on an [`nlxc.System`][] built from `mol`: the same grid, auxiliary
    basis and formulas as [`nlxc.scf.solve`][]: `mf.energy_tot(dm)` is nlxc's total energy of `dm`
    to round-off, and converged `mf.kernel()` and `nlxc.scf.solve` energies differ only by what
    the two convergence thresholds leave (~1e-13 Ha measured with `conv_tol=1e-10`).
    `functional.prepare(system)` is called once; `functional` is not modified. `mf.xc` is not consulted (it is set to `"nlxc"`), and
    `mf.grids` and `mf.with_df` describe the System's grid and auxiliary basis.

    **Arguments:**

    - `mol`: a built `pyscf.gto.Mole`.
    - `functional`: any [`nlxc.xc.AbstractFunctional`][]: semilocal, hybrid, or a nonlocal model
      from [`nlxc.models`][] (or a sum of these).
    - `system`: an [`nlxc.System`][] already built from `mol` (unpadded). `None` (default) builds
      one with `nlxc.System.from_pyscf(mol, grid_level=..., grids=..., auxbasis=...,
      restricted=..., grid_operators=...)`.
    - `grid_level`: PySCF's grid level 0–9 (default 3); only without `system` and `grids`.
    - `grids`: a `pyscf.dft.gen_grid.Grids` for `mol` to use (built here if not yet built); only
      without `system`. It becomes `mf.grids`.
    - `auxbasis`: auxiliary basis for density fitting; default `pyscf.df.make_auxbasis(mol)` (the
      JK-fit basis, as nlxc uses for every functional; PySCF's own `density_fit()` would choose a
      J-fit basis for pure functionals). With `system`, it only labels `mf.with_df`: the System's
      DF tensor is used either way.
    - `restricted`: RKS (`True`) or UKS (`False`); default: the System's setting, else RKS iff
      `mol.spin == 0`.
    - `grid_operators`: a [`nlxc.GridOperatorSpec`][] for the System; default: what the
      functional's parts declare in `required_grid_operators` (see
      [`required_grid_operators`][nlxc.grid_operators.required_grid_operators]). Only without `system`.

    **Returns:** a PySCF mean-field object, a `pyscf.dft.rks.RKS` or `pyscf.dft.uks.UKS` with
    density fitting (`pyscf.df.df_jk._DFHF`) and the [`NlxcKS`][nlxc.interop.pyscf.NlxcKS] mixin;
    energies in Hartree, matrices `(nao, nao)` (RKS) or `(2, nao, nao)` (UKS).

    **Raises:** [`nlxc.InputError`][] (one line) if `functional` is not an nlxc functional, `mol`
    is not a built molecular `Mole`, `system` is not a `System` or was not built from `mol` (other
    atoms, geometry, charge/spin, basis, or padded), `restricted` contradicts the System or asks
    for RKS with an open shell, `grids`/`grid_level`/`grid_operators` are given together with
    `system` or `grids` is not a PySCF `Grids`, the System lacks grid operators the functional
    needs, `grid_level` is not an integer 0–9, `auxbasis` is unknown (or, with `system`, has another
    size than the System's), or for anything [`nlxc.System.from_pyscf`][] rejects.

    Not available (they would evaluate `mf.xc` with libxc, so they raise `NotImplementedError`):
    nuclear gradients and Hessians, response functions (stability analysis, `mf.newton()`,
    TDDFT, CPHF), empirical dispersion, PySCF scanners on new geometries.
    """
    from pyscf import df, lib
    from pyscf.dft import gen_grid, rks, uks

    _check_functional(functional)
    _check_mole(mol)
    if restricted is not None and not isinstance(restricted, (bool, np.bool_)):
        raise InputError(f"restricted must be True, False or None, got {restricted!r}")
    if auxbasis is not None:
        try:
            auxmol = df.make_auxmol(mol, auxbasis)
        except Exception as err:  # PySCF raises KeyError/BasisNotFoundError/RuntimeError
            raise InputError(f"unknown auxiliary basis {auxbasis!r} for this molecule") from err
    if system is None:
        if grids is not None and grid_level is not None:
            raise InputError("give either grids or grid_level, not both")
        if grids is not None:
            if not isinstance(grids, gen_grid.Grids):
                raise InputError(f"grids must be a pyscf.dft.gen_grid.Grids, got {type(grids).__name__}")
            if grids.mol is not mol:
                raise InputError("grids were made for another Mole; use pyscf.dft.gen_grid.Grids(mol)")
        else:
            level = 3 if grid_level is None else grid_level
            if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 9:
                raise InputError(f"grid_level must be an integer from 0 to 9, got {grid_level!r}")
            grids = gen_grid.Grids(mol)
            grids.level = int(level)
        if grids.coords is None:
            grids.build(with_non0tab=False)
        if auxbasis is None:
            with quiet_basis_lookup():
                auxbasis = df.make_auxbasis(mol)
        if grid_operators is None:
            needed = required_grid_operators(functional)
            grid_operators = None if _is_empty(needed) else needed
        system = System.from_pyscf(mol, auxbasis=auxbasis, restricted=restricted, grids=grids,
                                   grid_operators=grid_operators)
        given_system = False
    else:
        if not isinstance(system, System):
            raise InputError(f"system must be an nlxc.System, got {type(system).__name__}")
        if grids is not None or grid_level is not None or grid_operators is not None:
            raise InputError("grids, grid_level and grid_operators are taken from the System when one is given")
        _check_system_matches(mol, system)
        if auxbasis is not None and auxmol.nao_nr() != system.naux:
            raise InputError(f"auxbasis {auxbasis!r} has {auxmol.nao_nr()} functions but the System's DF tensor "
                             f"has {system.naux}; leave auxbasis out to use the System's")
        if restricted is None:
            restricted = system.restricted
        if bool(restricted) != system.restricted:
            raise InputError(f"restricted={restricted} but the System is "
                             f"{'restricted' if system.restricted else 'unrestricted'}")
        needed = required_grid_operators(functional)
        if not needed.covered_by(system.grid_operators):
            raise InputError(
                f"the functional needs grid operators {needed} that the System lacks; build it with "
                "nlxc.System.from_pyscf(mol, grid_operators=nlxc.interop.pyscf.required_grid_operators(functional))"
            )
        grids = gen_grid.Grids(mol)
        grids.coords = np.asarray(system.grid_coords)
        grids.weights = np.asarray(system.grid_weights)
        given_system = True

    mf = rks.RKS(mol) if system.restricted else uks.UKS(mol)
    mf.grids = grids
    mf = mf.density_fit(auxbasis=auxbasis)
    if given_system:
        # The System's tensor, so that mf.get_j / mf.with_df agree with it (packed lower triangle).
        mf.with_df._cderi = np.asarray(system.cderi_packed)
    # Built lazily otherwise: PySCF computes the same tensor (same auxbasis) if mf.get_j is called.
    obj = NlxcKS(mf, functional, system)
    return lib.set_class(obj, (NlxcKS, mf.__class__))
