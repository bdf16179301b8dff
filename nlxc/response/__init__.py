"""Linear-response TDDFT for any nlxc functional: excitation energies, transition vectors and
oscillator strengths at an SCF solution (see docs/response.md).

The public names are re-exported here from the private implementation modules:

- `_tddft`: [`tddft`][nlxc.response.tddft] (the lowest excitations, Casida/RPA or
  Tamm–Dancoff, by a Davidson eigensolver), its [`Excitations`][nlxc.response.Excitations], and
  [`excitation_energies`][nlxc.response.excitation_energies] (the energies as a differentiable
  function of the functional, through the SCF and the eigenproblem).
- `_loss`: the excitation-energy loss of a padded batch
  ([`excitation_energy_loss`][nlxc.response.excitation_energy_loss], its
  [`ExcitationTargets`][nlxc.response.ExcitationTargets]) from dense matrices built inside jit
  ([`dense_excitation_energies`][nlxc.response.dense_excitation_energies]).
- `_operator`: the A, A + B and A − B products by automatic differentiation
  ([`ResponseOperator`][nlxc.response.ResponseOperator], [`response_energy`][nlxc.response.response_energy]).
"""

from ._loss import (
    EXCITATION_KINDS,
    ExcitationKind,
    ExcitationTargets,
    dense_excitation_energies,
    excitation_energy_loss,
    occupied_virtual_slots,
    per_molecule_excitation_errors,
)
from ._operator import ResponseOperator, Spin, response_energy
from ._tddft import Excitations, excitation_energies, tddft

__all__ = [
    "EXCITATION_KINDS",
    "ExcitationKind",
    "ExcitationTargets",
    "Excitations",
    "ResponseOperator",
    "Spin",
    "dense_excitation_energies",
    "excitation_energies",
    "excitation_energy_loss",
    "occupied_virtual_slots",
    "per_molecule_excitation_errors",
    "response_energy",
    "tddft",
]
