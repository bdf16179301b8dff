"""Exact (Hartree–Fock) exchange from the density-fitting tensor, and global hybrids.

The exchange matrix K(P) = −Σ_Q B_Q P B_Q is built from a factor of each density matrix: with
P = Σ_j λ_j u_j u_jᵀ (its eigenpairs, |λ_j| above numerical zero), K = −Σ_j λ_j Σ_Q (B_Q u_j)(B_Q u_j)ᵀ,
O(naux · nao² · rank) instead of O(naux · nao³); a density matrix of nσ occupied orbitals has
rank nσ. The columns are taken in chunks of `EXCHANGE_CHUNK` by a loop whose trip count is the
rank (under `jax.vmap` the largest rank of the batch), so the cost follows the rank of P with
static shapes. No derivative ever passes through the eigendecomposition: E_x and K carry custom
JVPs, ∂E_x/∂P = K (built from the factor) and ∂K/∂P · dP = −Σ_Q B_Q dP B_Q (the exact linear map,
O(naux · nao³), needed only by second-derivative paths such as the SCF adjoint), so derivatives
are exact and finite whatever the degeneracies of P's spectrum (the zero eigenvalue of an
idempotent P is (nao − nσ)-fold degenerate) — the same derivatives as the quadratic form itself.

The tensor B is either dense `(naux, nao, nao)` or packed `(naux, nao(nao+1)/2)` (the lower
triangle of each symmetric B_Q, as `System.cderi_packed` stores it). A packed tensor is unpacked
`EXCHANGE_AUX_BLOCK` auxiliary functions at a time inside a loop, so no full `(naux, nao, nao)`
array (nor the `(nspin, naux, nao, nao)` intermediate of the linear map) is ever formed: the
memory of K and of its tangents is O(EXCHANGE_AUX_BLOCK · nao² · nspin) beyond B itself.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jaxtyping import Array, Float

from ..system import unpack_tril
from ._base import AbstractFunctional
from ._util import parameter
from .gga import B88Exchange, LYPCorrelation, PBECorrelation, PBEExchange
from .lda import SlaterExchange, VWN5Correlation, VWNRPACorrelation

EXCHANGE_CHUNK = 16
"""Columns of the density-matrix factor contracted with the 3-index tensor at once."""

EXCHANGE_AUX_BLOCK = 128
"""Auxiliary functions of a packed 3-index tensor unpacked at once (EXCHANGE_AUX_BLOCK · nao² floats)."""

EXCHANGE_RANK_TOLERANCE = 1e-13
"""Eigenvalues of P with |λ| ≤ this × nao × max|λ| are numerical zeros and dropped from its factor."""


def _factor(density_matrix):
    """(U, λ, nchunk, finite) of one symmetric matrix: its eigenpairs sorted by |λ| descending
    (numerical zeros set to 0), padded with zero columns to a multiple of `EXCHANGE_CHUNK`; the
    number of chunks holding the nonzero ones; whether the matrix was finite."""
    nao = density_matrix.shape[-1]
    sym = 0.5 * (density_matrix + density_matrix.T)
    values, vectors = jnp.linalg.eigh(sym)
    order = jnp.argsort(-jnp.abs(values))
    values, vectors = values[order], vectors[:, order]
    largest = jnp.max(jnp.abs(values))
    keep = jnp.abs(values) > EXCHANGE_RANK_TOLERANCE * nao * largest
    values = jnp.where(keep, values, 0.0)
    nchunk = (jnp.sum(keep) + EXCHANGE_CHUNK - 1) // EXCHANGE_CHUNK
    padded = -(-nao // EXCHANGE_CHUNK) * EXCHANGE_CHUNK
    vectors = jnp.pad(vectors, ((0, 0), (0, padded - nao)))
    values = jnp.pad(values, (0, padded - nao))
    return vectors, values, nchunk, jnp.isfinite(largest)


def _exchange_matrix_one(cderi, density_matrix):
    """K(P) = −Σ_Q B_Q P B_Q of one symmetric P from its factor, O(naux · nao² · rank); NaN
    everywhere if P is not finite."""
    vectors, values, nchunk, finite = _factor(density_matrix)

    def chunk(i, k):
        u = jax.lax.dynamic_slice_in_dim(vectors, i * EXCHANGE_CHUNK, EXCHANGE_CHUNK, axis=1)
        w = jax.lax.dynamic_slice_in_dim(values, i * EXCHANGE_CHUNK, EXCHANGE_CHUNK)
        bu = jnp.einsum("Qmn,ni->Qmi", cderi, u)
        return k - jnp.einsum("Qmi,Qni->mn", bu * w, bu)

    k = jax.lax.fori_loop(0, nchunk, chunk, jnp.zeros_like(density_matrix))
    return jnp.where(finite, k, jnp.nan)


def _is_packed(cderi) -> bool:
    return cderi.ndim == 2


def _aux_blocks(packed):
    """(block size q, number of blocks) of a packed tensor `(naux, npair)`."""
    naux = packed.shape[0]
    q = min(EXCHANGE_AUX_BLOCK, naux)
    return q, -(-naux // q)


def _aux_block(packed, b, nao):
    """Block `b` of a packed tensor unpacked, `(q, nao, nao)`, and a mask `(q,)` of its rows that
    belong to no earlier block (the last block is shifted back to end at naux, so it overlaps
    the one before; the mask keeps every auxiliary function counted once)."""
    q, _ = _aux_blocks(packed)
    start = jnp.minimum(b * q, packed.shape[0] - q)
    rows = jax.lax.dynamic_slice_in_dim(packed, start, q, axis=0)
    fresh = (start + jnp.arange(q)) >= b * q
    return unpack_tril(rows, nao), fresh.astype(packed.dtype)


def _exchange_matrix_one_packed(packed, density_matrix):
    """`_exchange_matrix_one` for a packed tensor: blocks of auxiliary functions unpacked one at a
    time (outer loop), the factor's columns in chunks (inner loop, trip count the rank)."""
    vectors, values, nchunk, finite = _factor(density_matrix)
    nao = density_matrix.shape[-1]
    _, nblock = _aux_blocks(packed)

    def block(b, k):
        bq, fresh = _aux_block(packed, b, nao)

        def chunk(i, k):
            u = jax.lax.dynamic_slice_in_dim(vectors, i * EXCHANGE_CHUNK, EXCHANGE_CHUNK, axis=1)
            w = jax.lax.dynamic_slice_in_dim(values, i * EXCHANGE_CHUNK, EXCHANGE_CHUNK)
            bu = jnp.einsum("Qmn,ni->Qmi", bq, u)
            return k - jnp.einsum("Qmi,Qni->mn", bu * w * fresh[:, None, None], bu)

        return jax.lax.fori_loop(0, nchunk, chunk, k)

    k = jax.lax.fori_loop(0, nblock, block, jnp.zeros_like(density_matrix))
    return jnp.where(finite, k, jnp.nan)


def _exchange_matrix_linear(cderi, density_matrix):
    """K(X) = −Σ_Q B_Q X B_Q for any X `(nspin, nao, nao)`, O(naux · nao³): the exact linear map,
    used for tangents (a packed B by blocks of auxiliary functions)."""
    if not _is_packed(cderi):
        t = jnp.einsum("Qmn,snl->sQml", cderi, density_matrix)
        return -jnp.einsum("sQml,Qlk->smk", t, cderi)
    nao = density_matrix.shape[-1]
    _, nblock = _aux_blocks(cderi)

    def block(b, k):
        bq, fresh = _aux_block(cderi, b, nao)
        t = jnp.einsum("Qmn,snl->sQml", bq * fresh[:, None, None], density_matrix)
        return k - jnp.einsum("sQml,Qlk->smk", t, bq)

    return jax.lax.fori_loop(0, nblock, block, jnp.zeros_like(density_matrix))


@jax.custom_jvp
def _exchange_matrix(cderi, density_matrix):
    """K(Pσ) `(nspin, nao, nao)` of symmetric Pσ `(nspin, nao, nao)`, from the factors."""
    one = _exchange_matrix_one_packed if _is_packed(cderi) else _exchange_matrix_one
    return jax.vmap(one, in_axes=(None, 0))(cderi, density_matrix)


def _exchange_matrix_jvp(primals, tangents):
    # symbolic zeros: B is a constant in every SCF derivative, and its (dense) term is skipped
    cderi, density_matrix = primals
    cderi_dot, density_matrix_dot = tangents
    k = _exchange_matrix(cderi, density_matrix)
    dk = jnp.zeros_like(k)
    if not isinstance(density_matrix_dot, SymbolicZero):
        dk = dk + _exchange_matrix_linear(cderi, density_matrix_dot)
    if not isinstance(cderi_dot, SymbolicZero):
        dk = dk + _exchange_matrix_linear_cderi(cderi, cderi_dot, density_matrix)
    return k, dk


_exchange_matrix.defjvp(_exchange_matrix_jvp, symbolic_zeros=True)


def _exchange_matrix_linear_cderi(cderi, cderi_dot, density_matrix):
    """−Σ_Q (dB_Q P B_Q + B_Q P dB_Q) `(nspin, nao, nao)`: K's tangent along a tangent of B
    (a packed B and dB are unpacked whole: a path no SCF derivative takes)."""
    if _is_packed(cderi):
        nao = density_matrix.shape[-1]
        cderi, cderi_dot = unpack_tril(cderi, nao), unpack_tril(cderi_dot, nao)
    t = jnp.einsum("Qmn,snl->sQml", cderi_dot, density_matrix)
    half = -jnp.einsum("sQml,Qlk->smk", t, cderi)
    return half + jnp.swapaxes(half, -1, -2)


@jax.custom_jvp
def _exchange_energy(cderi, density_matrix):
    """−½ Σσ Σ_Q tr(B_Q Pσ B_Q Pσ) = ½ Σσ tr(Kσ Pσ) of symmetric Pσ `(nspin, nao, nao)`."""
    return 0.5 * jnp.sum(_exchange_matrix(cderi, density_matrix) * density_matrix)


def _exchange_energy_jvp(primals, tangents):
    cderi, density_matrix = primals
    cderi_dot, density_matrix_dot = tangents
    k = _exchange_matrix(cderi, density_matrix)
    energy = 0.5 * jnp.sum(k * density_matrix)
    d_energy = jnp.zeros_like(energy)
    if not isinstance(density_matrix_dot, SymbolicZero):
        # dE = tr(K dP): K = −Σ_Q B_Q P B_Q is ∂E/∂P for symmetric P
        d_energy = d_energy + jnp.sum(k * density_matrix_dot)
    if not isinstance(cderi_dot, SymbolicZero):
        # −Σσ Σ_Q tr(dB_Q Pσ B_Q Pσ)
        d_energy = d_energy + 0.5 * jnp.sum(_exchange_matrix_linear_cderi(cderi, cderi_dot, density_matrix) * density_matrix)
    return energy, d_energy


_exchange_energy.defjvp(_exchange_energy_jvp, symbolic_zeros=True)


def exact_exchange_energy(
    cderi: Float[Array, "naux nao nao"] | Float[Array, "naux npair"], density_matrix: Float[Array, "2 nao nao"],
    restricted: bool = False,
) -> Float[Array, ""]:
    """Density-fitted Hartree–Fock exchange energy, Hartree.

    E_x^HF = −½ Σσ Σ_Q tr(B_Q Pσ B_Q Pσ), with B the Cholesky-orthogonalised 3-index tensor,
    dense `(naux, nao, nao)` or packed `(naux, nao(nao+1)/2)` (`System.cderi_packed`: unpacked
    `EXCHANGE_AUX_BLOCK` auxiliary functions at a time), and Pσ the α/β density matrices
    `(2, nao, nao)` (symmetric). With
    `restricted=True` (Pα = Pβ) it is evaluated once on the mean of Pα and Pβ.

    Cost O(naux · nao² · rank Pσ) per spin (a factor of each Pσ, see the module docstring); its
    gradient ∂E/∂Pσ = −Σ_Q B_Q Pσ B_Q (the exchange matrix) costs the same, second derivatives
    O(naux · nao³). Derivatives never pass through the eigendecomposition, so they are exact for
    any (degenerate) spectrum of Pσ.
    """
    if restricted:
        mean = 0.5 * (density_matrix[0] + density_matrix[1])
        return 2.0 * _exchange_energy(cderi, mean[None])
    return _exchange_energy(cderi, density_matrix)


class ExactExchange(AbstractFunctional):
    """A fraction of exact exchange, a·E_x^HF[P] (Hartree), density-fitted.

    `fraction` is a trainable scalar (default 1). E_x^HF and its Fock contribution cost
    O(naux · nao² · nocc) (see [`exact_exchange_energy`][nlxc.xc.exact_exchange_energy]).
    """

    fraction: Float[Array, ""] = parameter(1.0)

    def __call__(self, density, density_matrix, system):
        return self.fraction * exact_exchange_energy(system.cderi_packed, density_matrix, system.restricted)


def HF() -> ExactExchange:
    """Hartree–Fock: the exchange–correlation energy is the full exact exchange."""
    return ExactExchange(1.0)


class B3LYP(AbstractFunctional):
    """B3LYP as defined by libxc HYB_GGA_XC_B3LYP (ID 402) and PySCF's `"b3lyp"`, Hartree.

    E_xc = a₀ E_x^HF + (1 − a₀ − a_x) E_x^Slater + a_x E_x^B88 + (1 − a_c) E_c^VWN + a_c E_c^LYP,
    with a₀ = 0.20, a_x = 0.72, a_c = 0.81 (trainable) and, following libxc/Gaussian, the VWN
    RPA parametrisation (libxc LDA_C_VWN_RPA, ID 8); `vwn5=True` gives "B3LYP5" (VWN5, ID 7).

    Source: Stephens, Devlin, Chabalowski, Frisch, J. Phys. Chem. 98, 11623 (1994),
    doi:10.1021/j100096a001; Becke, J. Chem. Phys. 98, 5648 (1993), doi:10.1063/1.464913.
    """

    a0: Float[Array, ""] = parameter(0.20)
    ax: Float[Array, ""] = parameter(0.72)
    ac: Float[Array, ""] = parameter(0.81)
    vwn5: bool = eqx.field(static=True, default=False)

    def __call__(self, density, density_matrix, system):
        vwn = VWN5Correlation() if self.vwn5 else VWNRPACorrelation()
        restricted = system.restricted
        e = (
            (1.0 - self.a0 - self.ax) * SlaterExchange().energy_density_of(density, restricted)
            + self.ax * B88Exchange().energy_density_of(density, restricted)
            + (1.0 - self.ac) * vwn.energy_density_of(density, restricted)
            + self.ac * LYPCorrelation().energy_density_of(density, restricted)
        )
        semilocal = jnp.sum(system.grid_weights * e)
        return semilocal + self.a0 * exact_exchange_energy(system.cderi_packed, density_matrix, system.restricted)


class PBE0(AbstractFunctional):
    """PBE0 (libxc HYB_GGA_XC_PBEH, ID 406; PySCF's `"pbe0"`), Hartree.

    E_xc = a E_x^HF + (1 − a) E_x^PBE + E_c^PBE with a = 0.25 (trainable).

    Source: Adamo & Barone, J. Chem. Phys. 110, 6158 (1999), doi:10.1063/1.478522; Ernzerhof &
    Scuseria, J. Chem. Phys. 110, 5029 (1999), doi:10.1063/1.478401.
    """

    a0: Float[Array, ""] = parameter(0.25)

    def __call__(self, density, density_matrix, system):
        restricted = system.restricted
        e = (1.0 - self.a0) * PBEExchange().energy_density_of(density, restricted) + PBECorrelation().energy_density_of(
            density, restricted
        )
        semilocal = jnp.sum(system.grid_weights * e)
        return semilocal + self.a0 * exact_exchange_energy(system.cderi_packed, density_matrix, system.restricted)
