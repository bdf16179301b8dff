"""Periodic systems: Kohn–Sham DFT of crystals on k-point samples, pure, jit-able and differentiable.

PySCF's periodic code (`pyscf.pbc`) supplies the cell, the Gaussian basis with GTH
pseudopotentials, the grid, the Gaussian density fitting (GDF) and the Ewald energy once; the
k-point SCF and its gradients are JAX. The public names, from the private modules:

- `_system`: [`PeriodicSystem`][nlxc.pbc.PeriodicSystem] (arrays per k-point, from a
  `pyscf.pbc.gto.Cell` or a PySCF `KRKS`/`KUKS` object).
- `_solve`: [`solve`][nlxc.pbc.solve], its [`PeriodicSCFResult`][nlxc.pbc.PeriodicSCFResult],
  the solver [`KCDIIS`][nlxc.pbc.KCDIIS] and the fixed-point map
  ([`periodic_scf_map`][nlxc.pbc.periodic_scf_map], [`PeriodicSCFArguments`][nlxc.pbc.PeriodicSCFArguments],
  [`PeriodicSCFAux`][nlxc.pbc.PeriodicSCFAux]).
- `_energy`: the energy per cell and its Fock matrices, the density features on the cell's grid.
- `_fit`: least-squares fits of a functional's parameters through the periodic SCF
  ([`fit_parameters`][nlxc.pbc.fit_parameters], [`FitTarget`][nlxc.pbc.FitTarget],
  [`pressure_target`][nlxc.pbc.pressure_target], [`PeriodicFit`][nlxc.pbc.PeriodicFit],
  [`stack_systems`][nlxc.pbc.stack_systems]).
- `_occupations`: Bloch orbitals, occupations shared over k-points, density matrices.

Smearing is [`nlxc.scf.FermiDirac`][], the default adjoint [`nlxc.scf.ImplicitAdjoint`][].
"""

from ._energy import (
    check_functional,
    density_features,
    energy_and_fock,
    energy_components,
    prepare_functional,
)
from ._eos import (
    DEFAULT_SCALES,
    EOS_NAMES,
    EOSFit,
    PeriodicEnergy,
    SCFNotConvergedError,
    eos_scan,
    fit_eos,
    reference_lattice_constant,
    scaled_structures,
)
from ._fit import FitTarget, PeriodicFit, fit_parameters, pressure_target, stack_systems
from ._occupations import density_from_fock, entropy, occupations_and_level, orbitals
from ._solve import (
    KCDIIS,
    PeriodicSCFArguments,
    PeriodicSCFAux,
    PeriodicSCFResult,
    as_complex,
    as_real,
    periodic_scf_map,
    solve,
)
from ._structure import build_cell, check_kmesh, check_occupations, read_structure
from ._system import PeriodicSystem

__all__ = [
    "DEFAULT_SCALES",
    "EOS_NAMES",
    "KCDIIS",
    "EOSFit",
    "FitTarget",
    "PeriodicEnergy",
    "PeriodicFit",
    "PeriodicSCFArguments",
    "PeriodicSCFAux",
    "PeriodicSCFResult",
    "PeriodicSystem",
    "SCFNotConvergedError",
    "as_complex",
    "as_real",
    "build_cell",
    "check_functional",
    "check_kmesh",
    "check_occupations",
    "density_features",
    "density_from_fock",
    "energy_and_fock",
    "energy_components",
    "entropy",
    "eos_scan",
    "fit_eos",
    "fit_parameters",
    "occupations_and_level",
    "orbitals",
    "periodic_scf_map",
    "prepare_functional",
    "pressure_target",
    "read_structure",
    "reference_lattice_constant",
    "scaled_structures",
    "solve",
    "stack_systems",
]
