"""Exchange–correlation functionals in JAX: semilocal baselines, exact exchange and hybrids.

Every functional is an `equinox.Module` whose parameters are trainable float leaves; the Fock
contribution always comes from automatic differentiation of the energy.
"""

from ..grid_operators import required_grid_operators
from ._base import AbstractFunctional, AbstractSemilocalFunctional, Scaled, SemilocalSum, Sum
from ._penalties import (
    GLOBAL_LIEB_OXFORD_CONSTANT,
    correlation_sign_penalty,
    lieb_oxford_penalty,
    size_consistency_penalty,
    spin_scaling_penalty,
    uniform_gas_penalty,
)
from ._registry import available, get_functional
from ._util import DENS_THRESHOLD
from .constraints import (
    LIEB_OXFORD_BOUND,
    EnhancedCorrelation,
    EnhancedExchange,
    PointwiseNetwork,
    ScaledSigmoid,
    squash_alpha,
    squash_s,
)
from .features import (
    LocalFeatures,
    SpinChannelFeatures,
    iso_orbital_indicator,
    reduced_gradient,
    spin_polarisation,
    weizsaecker_ratio,
    wigner_seitz_radius,
)
from .gga import B88Exchange, LYPCorrelation, PBECorrelation, PBEExchange
from .hybrid import B3LYP, HF, PBE0, ExactExchange, exact_exchange_energy
from .lda import PW92Correlation, SlaterExchange, VWN5Correlation, VWNRPACorrelation
from .mgga import R2SCANCorrelation, R2SCANExchange

__all__ = [
    "DENS_THRESHOLD",
    "LIEB_OXFORD_BOUND",
    "EnhancedCorrelation",
    "EnhancedExchange",
    "LocalFeatures",
    "PointwiseNetwork",
    "ScaledSigmoid",
    "SpinChannelFeatures",
    "iso_orbital_indicator",
    "reduced_gradient",
    "spin_polarisation",
    "squash_alpha",
    "squash_s",
    "weizsaecker_ratio",
    "wigner_seitz_radius",
    "AbstractFunctional",
    "AbstractSemilocalFunctional",
    "B3LYP",
    "B88Exchange",
    "ExactExchange",
    "HF",
    "LYPCorrelation",
    "PBE0",
    "PBECorrelation",
    "PBEExchange",
    "PW92Correlation",
    "R2SCANCorrelation",
    "R2SCANExchange",
    "Scaled",
    "SemilocalSum",
    "SlaterExchange",
    "Sum",
    "VWN5Correlation",
    "VWNRPACorrelation",
    "available",
    "exact_exchange_energy",
    "get_functional",
    "required_grid_operators",
    "GLOBAL_LIEB_OXFORD_CONSTANT",
    "correlation_sign_penalty",
    "lieb_oxford_penalty",
    "size_consistency_penalty",
    "spin_scaling_penalty",
    "uniform_gas_penalty",
]
