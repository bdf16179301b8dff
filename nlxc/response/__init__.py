"""Linear-response TDDFT for any nlxc functional: excitation energies, transition vectors and
oscillator strengths at an SCF solution (see docs/response.md).

The public names are re-exported here from the private implementation modules:

- `_tddft`: [`tddft`][nlxc.response.tddft] (the lowest excitations, Casida/RPA or
  Tamm–Dancoff, by a Davidson eigensolver), its [`Excitations`][nlxc.response.Excitations], and
  [`excitation_energies`][nlxc.response.excitation_energies] (the energies as a differentiable
  function of the functional, through the SCF and the eigenproblem).
- `_operator`: the A, A + B and A − B products by automatic differentiation
  ([`ResponseOperator`][nlxc.response.ResponseOperator], [`response_energy`][nlxc.response.response_energy]).
"""

from ._operator import ResponseOperator, Spin, response_energy
from ._tddft import Excitations, excitation_energies, tddft

__all__ = [
    "Excitations",
    "ResponseOperator",
    "Spin",
    "excitation_energies",
    "response_energy",
    "tddft",
]
