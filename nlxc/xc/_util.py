"""Numerical helpers shared by the semilocal functionals (private).

Thresholds follow libxc's conventions: a spin channel with ρσ below `DENS_THRESHOLD` contributes
nothing, and its derivatives are exactly zero (the "double where" keeps reverse-mode gradients
finite at ρσ = 0).
"""

import equinox as eqx
import jax.numpy as jnp

# Density below which a spin channel is treated as empty. libxc 7 uses 1e-15 for most functionals
# (its `dens_threshold`); we use the same value.
DENS_THRESHOLD = 1e-15
ZETA_THRESHOLD = 2.220446049250313e-16  # machine epsilon, libxc's `zeta_threshold`


def safe_density(rho, threshold=DENS_THRESHOLD):
    """(mask, rho_safe): rho where above threshold, 1 elsewhere (so powers and logs stay finite)."""
    mask = rho > threshold
    return mask, jnp.where(mask, rho, 1.0)


def _as_float_array(x):
    return jnp.asarray(x, dtype=jnp.float64)


def parameter(default: float):
    """A trainable scalar field: stored as a float64 0-d array so `eqx.filter_grad` sees it."""
    return eqx.field(default=default, converter=_as_float_array)
