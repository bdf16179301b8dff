"""Spin-polarised LDAs and GGAs (nlxc.xc.lda, nlxc.xc.gga) against libxc 7 via PySCF.

Functionals: Slater exchange (LDA_X, 1), VWN5 (LDA_C_VWN, 7), VWN-RPA (LDA_C_VWN_RPA, 8), PW92
(LDA_C_PW, 12 and LDA_C_PW_MOD, 13), B88 (GGA_X_B88, 106), PBE exchange (GGA_X_PBE, 101), PBE
correlation (GGA_C_PBE, 130) and LYP (GGA_C_LYP, 131); energies e = zk·(ρα+ρβ) and the first
derivatives vrho, vsigma, nlxc's from `jax.grad`.

Accuracy criterion (the same as tests/test_xc_mgga.py): for every compared point and component,

    |nlxc − libxc| ≤ 1e-10 · (|libxc| + scale),

on points where every spin density ρσ ≥ 1e-10 (ρ/2 ≥ 1e-10 unpolarised). `scale` is the natural
magnitude of the compared quantity from the LDA of the same kind (libxc LDA_X for exchange,
LDA_C_PW_MOD for correlation): |e^LDA| for e, |v_ρσ^LDA| for vrho and |e^LDA| / (σ̄ + ρ̄^{8/3})
for vsigma (σ̄, ρ̄^{8/3}: the σ and ρσ^{8/3} of the component's spins, averaged for σαβ). Without it
a plain relative error fails where a value is a cancellation of larger terms, and libxc — not nlxc
— carries the rounding noise there: in the low-density tails of the molecule PBE correlation is
ε_PW + H with H → −ε_PW (libxc loses up to 7e-4 of e, 1e-5 of vsigma; nlxc computes ε_PW + H in a
cancellation-free form and is exact to ~1e-14, see `test_hard_points_against_mpmath`), and LYP's
energy crosses zero. Measured worst cases on this metric: 4.7e-12 (B88 vrho near min ρσ/n = 1e-5,
libxc's 1 ± ζ round-off again), ≤ 3e-12 for the other functionals, ≤ 2e-12 unpolarised.

Strongly spin-polarised points (min ρσ / (ρα+ρβ) < 1e-5) get the tolerance widened by
2ε·n/ρ_min: libxc forms ζ = (ρα−ρβ)/n and then 1 ± ζ by subtraction, so its minority-spin factors
carry relative errors ~ε·n/ρ_min (up to ~1e-5 at the 1e-11 polarisation ratios of the random set:
e.g. B88 vrho of the minority spin is off by 3e-6 in libxc); nlxc forms 1 ± ζ = 2ρσ/n exactly.
The widened tolerance is used to at most 25% (B88). That nlxc is the accurate one there is checked
against 40-digit mpmath evaluations of the same formulas: error ≤ 1e-13·(|exact| + scale) for
every functional (measured ≤ 1.6e-14 even as a plain relative error; libxc's plain relative error
is up to 5e-6 at the same points, 2e-4 for PBE-C, 1e-5 for LYP).

Below 1e-10, values and gradients must be finite (exact zeros, ζ = ±1, σ = 0 included) and the
screening must reproduce libxc's: zero exactly where libxc gives zero, the same energies where
libxc clamps a channel to its density threshold.
"""

from __future__ import annotations

import functools
import itertools

import nlxc  # noqa: F401  (float64 first)

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pyscf.dft import libxc
from xc_reference import (
    MPMATH_DIGITS,
    PBE_BETA,
    PW92_DIGITS,
    PW92_MOD_DIGITS,
    libxc_polarized,
    libxc_unpolarized,
    molecular_polarized_density,
    mp_fz,
    mp_pbe_gamma,
    mp_phi,
    mp_pw92_eps,
    mp_spin,
    random_polarized_density,
    sigma_from_gradients,
)

from nlxc.xc import SemilocalSum
from nlxc.xc.gga import B88Exchange, LYPCorrelation, PBECorrelation, PBEExchange
from nlxc.xc.lda import (
    PW92_MOD_PARAMS,
    PW92_PARAMS,
    PW92Correlation,
    SlaterExchange,
    VWN5Correlation,
    VWNRPACorrelation,
    pw92_correlation_per_particle,
)

RTOL = 1e-10
RHO_MIN = 1e-10  # compare with libxc only where every ρσ ≥ this
POLARISATION_MIN = 1e-5  # below this min ρσ/n, widen by 2 ε n / ρ_min (module docstring)
MPMATH_RTOL = 1e-13
EPS = np.finfo(float).eps
KEYS = ("e", "vrho", "vsigma")
LDA_OF_KIND = {"x": "LDA_X", "c": "LDA_C_PW_MOD"}

# name: (constructor, libxc code, kinds whose LDA sets the scale)
FUNCTIONALS = {
    "slater": (SlaterExchange, "LDA_X", "x"),
    "vwn5": (VWN5Correlation, "LDA_C_VWN", "c"),
    "vwn_rpa": (VWNRPACorrelation, "LDA_C_VWN_RPA", "c"),
    "pw92": (PW92Correlation, "LDA_C_PW", "c"),
    "pw92_mod": (PW92Correlation.modified, "LDA_C_PW_MOD", "c"),
    "b88": (B88Exchange, "GGA_X_B88", "x"),
    "pbe_x": (PBEExchange, "GGA_X_PBE", "x"),
    "pbe_c": (PBECorrelation, "GGA_C_PBE", "c"),
    "lyp": (LYPCorrelation, "GGA_C_LYP", "c"),
    # B3LYP's semilocal part (libxc/PySCF B3LYP uses VWN_RPA), as one SemilocalSum
    "b3lyp_semilocal": (
        lambda: SemilocalSum(
            jnp.array([0.08, 0.72, 0.19, 0.81]),
            (SlaterExchange(), B88Exchange(), VWNRPACorrelation(), LYPCorrelation()),
        ),
        "0.08*SLATER + 0.72*B88, 0.19*VWNRPA + 0.81*LYP",
        "xc",
    ),
}
DATASETS = ("random", "molecular")


# --------------------------------------------------------------------------------------------
# point sets (all padded to one size: one XLA compilation per functional) and evaluation
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _molecular():
    rho, grad, tau = molecular_polarized_density()
    return rho, grad, sigma_from_gradients(grad), tau


def n_points():
    return max(2000, _molecular()[0].shape[1])


def _padded(rho, grad, sigma, tau):
    """Pad to n_points() with molecular points; returns the arrays and the mask of real points."""
    k, n = rho.shape[1], n_points()
    fill = _molecular()
    parts = [np.concatenate([x, y[..., : n - k]], axis=-1) for x, y in zip((rho, grad, sigma, tau), fill)]
    return (*parts, np.arange(n) < k)


def _tiny():
    """Pairs (ρα, ρβ) from {0, 1e-300, …, the thresholds, …, 1e-10} × (same ∪ {1e-6, 1, 1e3}) with
    zero, moderate and huge reduced gradients; then the same with σαβ beyond ±(σαα + σββ)/2 (which
    libxc clamps, but cannot be produced from gradients: those points are not compared)."""
    vals = [0.0, 1e-300, 1e-20, 1e-16, 1e-15, 2e-15, 1e-14, 3e-14, 1e-13, 1e-12, 2e-12, 1e-11, 1e-10]
    partners = vals + [1e-6, 1.0, 1e3]
    pairs = np.array(list(itertools.product(vals, partners)) + list(itertools.product(partners, vals))).T
    rng = np.random.default_rng(0)
    rho = np.concatenate([pairs] * 3, axis=1)
    scale = np.maximum(rho, 1e-30)[:, None, :] ** (4 / 3)
    grad = np.concatenate([size * rng.normal(size=(2, 3, pairs.shape[1])) for size in (0.0, 1.0, 1e3)], axis=2)
    grad = grad * scale
    sigma = sigma_from_gradients(grad)
    rho, grad, sigma, tau, real = _padded(rho, grad, sigma, np.zeros_like(rho))
    # the padding itself becomes the out-of-bounds-σαβ block
    k = real.sum()
    rho[:, k:2 * k], grad[..., k:2 * k] = rho[:, :k], grad[..., :k]
    sigma[:, k:2 * k] = sigma[:, :k]
    sigma[1, k:2 * k] = np.where(np.arange(k) % 2, 3.0, -3.0) * (sigma[0, :k] + sigma[2, :k] + 1e-30)
    tau[:] = 0.0
    return rho, grad, sigma, tau, real


def _hard():
    """The 8 most polarised points of the random set (ρ_min/n down to 1e-11) and the 6 molecular
    tail points with the largest reduced gradient (where PBE correlation cancels), all ρσ ≥ 1e-10."""
    rho_r, grad_r, sigma_r, tau_r, real = point_set("random")
    ok = np.nonzero(real & (rho_r.min(0) >= RHO_MIN))[0]
    pick_r = ok[np.argsort(rho_r.min(0)[ok] / rho_r.sum(0)[ok])[:8]]
    rho_m, grad_m, sigma_m, tau_m = _molecular()
    ok = np.nonzero(rho_m.min(0) >= RHO_MIN)[0]
    xt2 = (sigma_m[0] + 2 * sigma_m[1] + sigma_m[2])[ok] / rho_m.sum(0)[ok] ** (8 / 3)
    pick_m = ok[np.argsort(xt2)[-6:]]
    return _padded(*(np.concatenate([a[..., pick_r], b[..., pick_m]], axis=-1)
                     for a, b in zip((rho_r, grad_r, sigma_r, tau_r), (rho_m, grad_m, sigma_m, tau_m))))


@functools.lru_cache(maxsize=None)
def point_set(name):
    """(rho, grad, sigma, tau, real) for "random" (2000 points of `random_polarized_density`),
    "molecular" (`molecular_polarized_density`), "tiny" and "hard"."""
    if name == "random":
        rho, grad, tau = random_polarized_density(2000, seed=0)
        return _padded(rho, grad, sigma_from_gradients(grad), tau)
    if name == "molecular":
        return (*_molecular(), np.ones(n_points(), bool))
    return {"tiny": _tiny, "hard": _hard}[name]()


@functools.lru_cache(maxsize=None)
def unpolarized_point_set(name):
    rho, grad, _, tau, real = point_set(name)
    rho_t, grad_t, tau_t = rho.sum(0), grad.sum(0), tau.sum(0)
    return rho_t, grad_t, np.einsum("xn,xn->n", grad_t, grad_t), tau_t, real


@eqx.filter_jit
def _evaluate(functional, rho, sigma, tau):
    params, static = eqx.partition(functional, eqx.is_inexact_array)

    def energy_density(params, rho, sigma):
        return eqx.combine(params, static).energy_density(rho, sigma, tau)

    # one reverse pass for ∂(Σ e)/∂(θ, ρ, σ): as cheap to compile as the input gradients alone
    e, pullback = jax.vjp(energy_density, params, rho, sigma)
    dparams, vrho, vsigma = pullback(jnp.ones_like(e))
    return {"e": e, "vrho": vrho, "vsigma": vsigma}, dparams


def evaluate(functional, rho, sigma, tau):
    """nlxc's e, ∂E/∂ρσ and ∂E/∂σσσ' (E = Σ e; the same as xc_reference.nlxc_polarized's
    jax.grad) as numpy arrays."""
    out, _ = _evaluate(functional, *(jnp.asarray(x) for x in (rho, sigma, tau)))
    return {k: np.asarray(v) for k, v in out.items()}


def parameter_gradients(functional, rho, sigma, tau):
    """∂E/∂θ for every trainable parameter θ, as a list of arrays."""
    _, dparams = _evaluate(functional, *(jnp.asarray(x) for x in (rho, sigma, tau)))
    return jax.tree_util.tree_leaves(dparams)


def evaluate_unpolarized(functional, rho, sigma, tau):
    """nlxc at ρα = ρβ = ρ/2, σσσ' = σ/4, derivatives w.r.t. the total ρ and σ (libxc spin=0)."""
    out = evaluate(functional, np.stack([rho / 2] * 2), np.stack([sigma / 4] * 3), np.stack([tau / 2] * 2))
    return {"e": out["e"], "vrho": out["vrho"].sum(0) / 2, "vsigma": out["vsigma"].sum(0) / 4}


@eqx.filter_jit
def _evaluate_unpolarised_form(functional, rho, sigma, tau):
    e, pullback = jax.vjp(lambda r, s: functional.energy_density_unpolarised(r, s, tau), rho, sigma)
    vrho, vsigma = pullback(jnp.ones_like(e))
    return {"e": e, "vrho": vrho, "vsigma": vsigma}


def evaluate_unpolarised_form(functional, rho, sigma, tau):
    """nlxc's ζ = 0 form `energy_density_unpolarised(ρ, σ, τ)` (what restricted Systems use) and
    its derivatives w.r.t. the total ρ and σ (libxc spin=0), as numpy arrays."""
    out = _evaluate_unpolarised_form(functional, *(jnp.asarray(x) for x in (rho, sigma, tau)))
    return {k: np.asarray(v) for k, v in out.items()}


def _sigma_bar(rho, sigma):
    """Per-component σ̄ + ρ̄^{8/3}: the natural size of σ for vsigma's scale (see docstring)."""
    r83 = rho ** (8.0 / 3.0)
    return np.stack([sigma[0] + r83[0], 0.5 * (sigma[0] + sigma[2] + r83[0] + r83[1]), sigma[2] + r83[1]])


@functools.lru_cache(maxsize=None)
def polarized_scale(kinds, data):
    rho, grad, sigma, tau, _ = point_set(data)
    e = vrho = 0.0
    for kind in kinds:
        lda = libxc_polarized(LDA_OF_KIND[kind], rho, grad, tau)
        e, vrho = e + np.abs(lda["e"]), vrho + np.abs(lda["vrho"])
    return {"e": e[None], "vrho": vrho, "vsigma": e / _sigma_bar(rho, sigma)}


@functools.lru_cache(maxsize=None)
def unpolarized_scale(kinds, data):
    rho, grad, sigma, tau, _ = unpolarized_point_set(data)
    e = vrho = 0.0
    for kind in kinds:
        lda = libxc_unpolarized(LDA_OF_KIND[kind], rho, grad, tau)
        e, vrho = e + np.abs(lda["e"]), vrho + np.abs(lda["vrho"])
    return {"e": e[None], "vrho": vrho[None], "vsigma": (e / (sigma + rho ** (8.0 / 3.0)))[None]}


def polarisation_widening(rho, threshold=0.0):
    """2ε·n/ρ_min where min ρσ/n < 1e-5, else 0 (libxc's 1 ± ζ round-off; module docstring)."""
    clamped = np.maximum(rho, threshold)
    n, rho_min = clamped.sum(0), clamped.min(0)
    return np.where(rho_min < POLARISATION_MIN * n, 2.0 * EPS * n / np.maximum(rho_min, 1e-300), 0.0)


def assert_close(out, ref, scale, select, widen=0.0, rtol=RTOL, label="", keys=KEYS):
    """|out − ref| ≤ (rtol + widen)·(|ref| + scale) on the selected points."""
    for key in keys:
        a, b = np.atleast_2d(out[key]), np.atleast_2d(ref[key])
        assert np.all(np.isfinite(a)), f"{label} {key}: non-finite values"
        bound = (rtol + widen) * (np.abs(b) + scale[key])
        diff = np.abs(a - b)
        err = np.divide(diff, bound, out=np.where(diff > 0, np.inf, 0.0), where=bound > 0)
        err[:, ~select] = 0.0
        if err.max() > 1.0:
            c, j = np.unravel_index(np.argmax(err), err.shape)
            raise AssertionError(
                f"{label} {key}[{c}] at point {j}: nlxc {a[c, j]!r} vs reference {b[c, j]!r}, "
                f"error {err.max():.2f} × tolerance ({np.sum(err > 1)} values fail)"
            )


# --------------------------------------------------------------------------------------------
# comparison with libxc
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_polarized_matches_libxc(name, data):
    """Spin-polarised e, vrho, vsigma vs libxc (spin=1) where every ρσ ≥ 1e-10.

    Tolerance 1e-10·(|libxc| + LDA scale), widened by 2ε·n/ρ_min where min ρσ/n < 1e-5.
    """
    factory, code, kinds = FUNCTIONALS[name]
    rho, grad, sigma, tau, real = point_set(data)
    out = evaluate(factory(), rho, sigma, tau)
    ref = libxc_polarized(code, rho, grad, tau)
    select = real & (rho.min(0) >= RHO_MIN)
    assert_close(out, ref, polarized_scale(kinds, data), select, polarisation_widening(rho), label=name)


@pytest.mark.parametrize("data", DATASETS)
@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_unpolarized_matches_libxc(name, data):
    """nlxc at ρα = ρβ = ρ/2 vs libxc spin=0, derivatives w.r.t. total ρ and σ, where ρ/2 ≥ 1e-10;
    the same for the ζ = 0 form `energy_density_unpolarised` (the restricted path).

    Tolerance 1e-10·(|libxc| + LDA scale).
    """
    factory, code, kinds = FUNCTIONALS[name]
    rho, grad, sigma, tau, real = unpolarized_point_set(data)
    out = evaluate_unpolarized(factory(), rho, sigma, tau)
    ref = libxc_unpolarized(code, rho, grad, tau)
    assert_close(out, ref, unpolarized_scale(kinds, data), real & (rho / 2 >= RHO_MIN), label=name)
    direct = evaluate_unpolarised_form(factory(), rho, sigma, tau)
    assert_close(direct, ref, unpolarized_scale(kinds, data), real & (rho / 2 >= RHO_MIN),
                 label=f"{name} (energy_density_unpolarised)")


# libxc functionals that are the same formulas with other parameters: the parameters are real.
VARIANTS = {
    "revPBE_x": (lambda: PBEExchange(kappa=1.245), "GGA_X_PBE_R", "x"),
    "PBEsol_x": (lambda: PBEExchange(mu=10.0 / 81.0), "GGA_X_PBE_SOL", "x"),
    "PBEsol_c": (lambda: PBECorrelation(beta=0.046), "GGA_C_PBE_SOL", "c"),
    "optB88": (lambda: B88Exchange(beta=0.00336865923905927, gamma=6.98131700797731),
               "GGA_X_OPTB88_VDW", "x"),
    "TM-LYP": (lambda: LYPCorrelation(a=0.0393, b=0.21, c=0.41, d=0.15), "GGA_C_TM_LYP", "c"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_reproduce_libxc_variants(name):
    """Non-default parameters reproduce libxc's reparametrised functionals (random set, same
    criterion as `test_polarized_matches_libxc`)."""
    factory, code, kinds = VARIANTS[name]
    rho, grad, sigma, tau, real = point_set("random")
    out = evaluate(factory(), rho, sigma, tau)
    ref = libxc_polarized(code, rho, grad, tau)
    select = real & (rho.min(0) >= RHO_MIN)
    assert_close(out, ref, polarized_scale(kinds, "random"), select, polarisation_widening(rho), label=name)


@pytest.mark.parametrize("params, code", [(PW92_PARAMS, "LDA_C_PW"), (PW92_MOD_PARAMS, "LDA_C_PW_MOD")])
def test_pw92_per_particle_function(params, code):
    """`pw92_correlation_per_particle(rs, ζ)` (the helper exported for PBE/r²SCAN) vs libxc's zk."""
    rng = np.random.default_rng(1)
    rs = np.exp(rng.uniform(np.log(1e-3), np.log(1e3), 500))
    zeta = np.concatenate([rng.uniform(-1, 1, 496), [0.0, -0.999999, 0.999999, 0.5]])
    n = 3.0 / (4.0 * np.pi * rs**3)
    rho = np.stack([n * (1 + zeta) / 2, n * (1 - zeta) / 2])
    exc = libxc.eval_xc(code, (rho[0][None], rho[1][None]), spin=1, deriv=0)[0]
    pw92 = jax.jit(pw92_correlation_per_particle)
    ours = np.asarray(pw92(jnp.asarray(rs), jnp.asarray(zeta), params))
    np.testing.assert_allclose(ours, exc, rtol=RTOL)
    # fully polarised: finite value and derivatives
    grad = jax.jit(jax.vmap(jax.grad(pw92_correlation_per_particle, argnums=(0, 1)), (0, 0, None)))(
        jnp.array([0.5, 2.0, 0.5, 2.0]), jnp.array([1.0, 1.0, -1.0, -1.0]), params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grad)


# --------------------------------------------------------------------------------------------
# tiny densities, thresholds, finiteness, parameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_finite_and_screened_at_tiny_densities(name):
    """Values and jax.grad derivatives are finite for ρσ ∈ [0, 1e-10] (exact zeros, ζ = ±1, σ = 0,
    σαβ out of bounds included), and the screening follows libxc: e = 0
    exactly where libxc's e is 0, and otherwise the same energy — libxc clamps each ρσ to its
    density threshold and returns the clamped ε, which PySCF multiplies by the unclamped ρα + ρβ —
    to 1e-8·(|e| + |e^LDA|), widened by 2ε·n/ρ_min (ρ_min after clamping) as in the main test:
    at (0, 1e3) libxc's LYP forms 1 − ζ² with 1 − ζ ~ 1e-17 and has no correct digit left."""
    factory, code, kinds = FUNCTIONALS[name]
    functional = factory()
    rho, grad, sigma, tau, real = point_set("tiny")
    out = evaluate(functional, rho, sigma, tau)
    for key in KEYS:
        assert np.all(np.isfinite(out[key])), f"{name}: non-finite {key}"

    ref = libxc_polarized(code, rho, grad, tau)
    np.testing.assert_array_equal((out["e"] == 0.0)[real], (ref["e"] == 0.0)[real])
    e_lda = sum(np.abs(libxc_polarized(LDA_OF_KIND[k], rho, grad, tau)["e"]) for k in kinds)
    threshold = min(t.dens_threshold for t in getattr(functional, "terms", (functional,)))
    widen = polarisation_widening(rho, threshold)
    assert_close(out, ref, {"e": e_lda[None]}, real, widen, rtol=1e-8, label=name, keys=("e",))


@pytest.mark.parametrize("name", list(FUNCTIONALS))
def test_parameter_gradients(name):
    """Every trainable parameter gets a finite, nonzero gradient on the tiny-density set (which also
    holds ordinary densities: the partners 1e-6, 1, 1e3 and the padding molecular points)."""
    factory, _, _ = FUNCTIONALS[name]
    rho, _, sigma, tau, _ = point_set("tiny")
    leaves = parameter_gradients(factory(), rho, sigma, tau)
    assert leaves
    for g in leaves:
        assert bool(jnp.all(jnp.isfinite(g)))
        assert bool(jnp.all(g != 0.0))


# --------------------------------------------------------------------------------------------
# 40-digit references where libxc itself is inaccurate
# --------------------------------------------------------------------------------------------


def _mpmath_references():
    """Energy densities e(ρα, ρβ, σαα, σαβ, σββ) written directly from the papers/libxc formulas,
    in mpmath (naive forms: 40 digits absorb every cancellation); PW92, f(ζ), φ(ζ) and PBE's β,
    γ are the ones of tests/xc_reference.py (shared with tests/test_xc_mgga.py)."""
    mp = pytest.importorskip("mpmath")
    f = mp.mpf
    with mp.workdps(MPMATH_DIGITS):
        third = f(1) / 3
        xfc = f(3) / 8 * (3 / mp.pi) ** third * 4 ** (2 * third)
    spin, fz = mp_spin, mp_fz

    def slater(ra, rb, *s):
        return -xfc * (ra ** (4 * third) + rb ** (4 * third))

    def vwn_aux(a, b, c, x0, rs):
        a, b, c, x0 = f(a), f(b), f(c), f(x0)
        x, q = mp.sqrt(rs), mp.sqrt(4 * c - b * b)
        fx = rs + b * x + c
        f2 = b * x0 / (x0 * x0 + b * x0 + c)
        return a * (mp.log(rs / fx) + (2 * b / q - f2 * 2 * (2 * x0 + b) / q) * mp.atan(q / (2 * x + b))
                    - f2 * mp.log((x - x0) ** 2 / fx))

    def vwn5(ra, rb, *s):
        n, rs, z = spin(ra, rb)
        ep = vwn_aux("0.0310907", "3.72744", "12.9352", "-0.10498", rs)
        ef = vwn_aux("0.01554535", "7.06042", "18.0578", "-0.32500", rs)
        ac = vwn_aux(-1 / (6 * mp.pi**2), "1.13107", "13.0045", "-0.0047584", rs)
        fpp = 4 / (9 * (2**third - 1))
        return n * (ep + ac * fz(z) * (1 - z**4) / fpp + (ef - ep) * fz(z) * z**4)

    def vwn_rpa(ra, rb, *s):
        n, rs, z = spin(ra, rb)
        ep = vwn_aux("0.0310907", "13.0720", "42.7198", "-0.409286", rs)
        ef = vwn_aux("0.01554535", "20.1231", "101.578", "-0.743294", rs)
        return n * (ep * (1 - fz(z)) + ef * fz(z))

    def pw(params):
        def e(ra, rb, *s):
            n, rs, z = spin(ra, rb)
            return n * mp_pw92_eps(rs, z, params)[0]

        return e

    def b88(ra, rb, saa, sab, sbb):
        beta = f("0.0042")
        out = 0
        for r, s in ((ra, saa), (rb, sbb)):
            x = mp.sqrt(s) / r ** (4 * third)
            out += -xfc * r ** (4 * third) * (1 + beta / xfc * x**2 / (1 + 6 * beta * x * mp.asinh(x)))
        return out

    def pbe_x(ra, rb, saa, sab, sbb):
        kappa, mu = f("0.804"), f("0.2195149727645171")
        x2s = 1 / (2 * (6 * mp.pi**2) ** third)
        out = 0
        for r, s in ((ra, saa), (rb, sbb)):
            s2 = x2s**2 * s / r ** (8 * third)
            out += -xfc * r ** (4 * third) * (1 + kappa - kappa**2 / (kappa + mu * s2))
        return out

    def pbe_c(ra, rb, saa, sab, sbb):
        n, rs, z = spin(ra, rb)
        beta, gamma = f(PBE_BETA), mp_pbe_gamma()
        eps = mp_pw92_eps(rs, z, PW92_MOD_DIGITS)[0]
        phi = mp_phi(z)
        # t = |∇n| / (2 φ k_s n), k_s = sqrt(4 k_F / π), k_F = (3π²n)^{1/3}
        ks = mp.sqrt(4 * (3 * mp.pi**2 * n) ** third / mp.pi)
        t2 = (saa + 2 * sab + sbb) / (2 * phi * ks * n) ** 2
        a = beta / gamma / (mp.exp(-eps / (gamma * phi**3)) - 1)
        h = gamma * phi**3 * mp.log(1 + beta / gamma * t2 * (1 + a * t2) / (1 + a * t2 + a**2 * t2**2))
        return n * (eps + h)

    def lyp(ra, rb, saa, sab, sbb):
        a, b, c, d = f("0.04918"), f("0.132"), f("0.2533"), f("0.349")
        n = ra + rb
        st = saa + 2 * sab + sbb
        cf = f(3) / 10 * (3 * mp.pi**2) ** (2 * third)
        r = n ** (-third)
        omega = mp.exp(-c * r) / (1 + d * r) * n ** (-11 * third)
        delta = c * r + d * r / (1 + d * r)
        bracket = (ra * rb * (2 ** (11 * third) * cf * (ra ** (8 * third) + rb ** (8 * third))
                              + (f(47) / 18 - f(7) / 18 * delta) * st - (f(5) / 2 - delta / 18) * (saa + sbb)
                              - (delta - 11) / 9 * (ra / n * saa + rb / n * sbb))
                   - f(2) / 3 * n**2 * st + (f(2) / 3 * n**2 - ra**2) * sbb + (f(2) / 3 * n**2 - rb**2) * saa)
        return -4 * a / (1 + d * r) * ra * rb / n - a * b * omega * bracket

    refs = {"slater": slater, "vwn5": vwn5, "vwn_rpa": vwn_rpa, "pw92": pw(PW92_DIGITS),
            "pw92_mod": pw(PW92_MOD_DIGITS), "b88": b88, "pbe_x": pbe_x, "pbe_c": pbe_c, "lyp": lyp}
    return mp, refs


@pytest.mark.parametrize("name", [n for n in FUNCTIONALS if n != "b3lyp_semilocal"])  # a sum of these
def test_hard_points_against_mpmath(name):
    """At extreme polarisation and in the cancelling PBE tails, where libxc loses digits, nlxc's
    e, vrho, vsigma agree with 40-digit evaluations to 1e-13·(|exact| + LDA scale). (The scale
    only matters for LYP's vsigma in the molecular tail, ~1e-160: exp(−c n^{-1/3}) is below what
    a numerical mpmath derivative of the ~1e-14 energy can resolve.)"""
    mp, refs = _mpmath_references()
    factory, code, kinds = FUNCTIONALS[name]
    functional = factory()
    rho, grad, sigma, tau, real = point_set("hard")
    out = evaluate(functional, rho, sigma, tau)
    exact = {"e": np.zeros((1, rho.shape[1])), "vrho": np.zeros_like(rho), "vsigma": np.zeros_like(sigma)}
    nvar = 2 if functional.family == "lda" else 5
    with mp.workdps(MPMATH_DIGITS):
        for j in np.nonzero(real)[0]:
            x = [mp.mpf(float(v)) for v in (rho[0, j], rho[1, j], sigma[0, j], sigma[1, j], sigma[2, j])]
            exact["e"][0, j] = float(refs[name](*x))
            for i in range(nvar):

                def partial(t, i=i):
                    y = list(x)
                    y[i] = t
                    return refs[name](*y)

                value = float(mp.diff(partial, x[i]))
                if i < 2:
                    exact["vrho"][i, j] = value
                else:
                    exact["vsigma"][i - 2, j] = value
    assert_close(out, exact, polarized_scale(kinds, "hard"), real, rtol=MPMATH_RTOL, label=name)
