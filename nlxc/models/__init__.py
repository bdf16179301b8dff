"""The nonlocal model zoo: learnable exchange–correlation models as Equinox modules.

Every model is an [`nlxc.xc.AbstractFunctional`][]: it composes with the semilocal baselines
(`PBE() + model`), runs inside [`nlxc.scf.solve`][] and `jax.vmap`, and gets its Fock
contribution by automatic differentiation. Models are initialised near zero (a small correction)
unless stated otherwise.
"""

from .atomic import AtomCentredCorrection, EquivariantCorrection
from .attention import AtomAttention
from .grid_atom import GridAtomMessagePassing
from ._mlp import MLP
from .descriptors import AtomDensityProjection, lda_exchange_energy_density, local_inputs

__all__ = [
    "MLP",
    "AtomAttention",
    "AtomCentredCorrection",
    "AtomDensityProjection",
    "EquivariantCorrection",
    "GridAtomMessagePassing",
    "lda_exchange_energy_density",
    "local_inputs",
]
