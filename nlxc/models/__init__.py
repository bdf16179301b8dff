"""The nonlocal model zoo: learnable exchange–correlation models as Equinox modules.

Every model is an [`nlxc.xc.AbstractFunctional`][]: it composes with the semilocal baselines
(`PBE() + model`), runs inside [`nlxc.scf.solve`][] and `jax.vmap`, and gets its Fock
contribution by automatic differentiation. Models are initialised near zero (a small correction)
unless stated otherwise.

Models with geometry-only data (neighbour lists, Skala's dispersion energy) are
[`AbstractGeometryModel`][nlxc.models.AbstractGeometryModel]s: [`prepare_system`][nlxc.models.prepare_system]
computes that data on the host and stores it in the System, so the compiled SCF holds no host
callback (and JAX's persistent compilation cache can keep it); [`nlxc.solve`][] does this for
a concrete System.
"""

from .atomic import AtomCentredCorrection, EquivariantCorrection
from .attention import AtomAttention, GridAttention
from .grid_atom import GridAtomMessagePassing
from .graph import CoarseGraphNetwork, GridGraphNetwork
from .operator import AuxiliaryNeuralOperator
from .neighbours import AtomNeighbours, GridNeighbours, atom_neighbours, grid_neighbours, periodic_atom_neighbours
from ._geometry import AbstractGeometryModel, prepare_system
from ._mlp import MLP
from ._neural_lda import NeuralLDA
from .descriptors import (
    AbstractPeriodicAtomNeighbourModel,
    AtomDensityProjection,
    lda_exchange_energy_density,
    local_inputs,
)
from .skala import (
    SKALA_D3BJ_PARAMETERS,
    SKALA_WEIGHTS_SHA256,
    Skala,
    d3bj_dispersion_energy,
    get_functional,
    skala_weights_path,
)
from .local_exchange import LocalHybrid, local_exact_exchange, uniform_gas_long_range_fraction
from .cider import (
    DEFAULT_CIDER_EXPONENTS,
    DEFAULT_CIDER_SCALES,
    NonlocalEnhancedExchange,
    gaussian_density_descriptors,
)

__all__ = [
    "MLP",
    "NeuralLDA",
    "AbstractGeometryModel",
    "AbstractPeriodicAtomNeighbourModel",
    "AtomAttention",
    "AtomCentredCorrection",
    "AtomDensityProjection",
    "AtomNeighbours",
    "AuxiliaryNeuralOperator",
    "CoarseGraphNetwork",
    "GridAttention",
    "GridGraphNetwork",
    "GridNeighbours",
    "atom_neighbours",
    "grid_neighbours",
    "periodic_atom_neighbours",
    "prepare_system",
    "EquivariantCorrection",
    "GridAtomMessagePassing",
    "lda_exchange_energy_density",
    "local_inputs",
    "DEFAULT_CIDER_EXPONENTS",
    "DEFAULT_CIDER_SCALES",
    "LocalHybrid",
    "NonlocalEnhancedExchange",
    "gaussian_density_descriptors",
    "local_exact_exchange",
    "uniform_gas_long_range_fraction",
    "SKALA_D3BJ_PARAMETERS",
    "SKALA_WEIGHTS_SHA256",
    "Skala",
    "d3bj_dispersion_energy",
    "get_functional",
    "skala_weights_path",
]
