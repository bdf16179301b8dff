"""nlxc: learning exchange–correlation functionals through differentiable Kohn–Sham DFT.

Importing nlxc switches JAX to float64 (`jax_enable_x64`), which nlxc needs throughout.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)

from . import batch, data, models, scf, xc  # noqa: E402
from . import losses, response  # noqa: E402
from . import evaluation, train  # noqa: E402
from ._errors import InputError  # noqa: E402
from ._version import __version__  # noqa: E402
from .grid import Density  # noqa: E402
from .grid_operators import AuxiliaryGridOperators, GridOperatorSpec  # noqa: E402
from .properties import density_on_grid, dipole_moment, homo_lumo  # noqa: E402
from .scf import SCFResult, solve  # noqa: E402
from .system import System, build_mole, mole_from_xyz, pad_system, pad_to_common_shape  # noqa: E402
from .models import get_functional  # noqa: E402  (the xc registry plus pretrained models: "skala")

__all__ = [
    "__version__",
    "AuxiliaryGridOperators",
    "GridOperatorSpec",
    "Density",
    "losses",
    "response",
    "evaluation",
    "train",
    "batch",
    "data",
    "InputError",
    "SCFResult",
    "System",
    "build_mole",
    "density_on_grid",
    "dipole_moment",
    "homo_lumo",
    "get_functional",
    "models",
    "mole_from_xyz",
    "pad_system",
    "pad_to_common_shape",
    "scf",
    "solve",
    "xc",
]
