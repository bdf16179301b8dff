"""Helpers shared by the model zoo's modules (private to `nlxc.models`).

Atoms (element numbers, embeddings, equivariant messages between atoms), atom-neighbour slots
on the grid (radial × spherical-harmonic bases, a scan over the slots), the cosine cutoff, and
PBE exchange's enhancement factor, which several models use as their baseline. Lengths in Bohr.
"""

from __future__ import annotations

import math

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ..xc.gga import PBE_KAPPA, PBE_MU

__all__ = [
    "MAX_ATOMIC_NUMBER",
    "atom_interaction",
    "atom_mask_and_numbers",
    "cosine_cutoff",
    "element_embedding",
    "gaussian_basis",
    "pbe_exchange_enhancement",
    "scan_image_slots",
    "scan_slots",
    "slot_basis",
]

MAX_ATOMIC_NUMBER = 36
"""The largest element (Kr) with its own learnable embedding; heavier elements share Kr's."""


def atom_mask_and_numbers(system) -> tuple[Bool[Array, " natom"], Int[Array, " natom"]]:
    """(real-atom mask, atomic numbers clipped to [0, MAX_ATOMIC_NUMBER]) from `system.atom_charges`;
    padded atoms (charge 0) are masked out."""
    z = jnp.round(system.atom_charges).astype(jnp.int32)
    return z > 0, jnp.clip(z, 0, MAX_ATOMIC_NUMBER)


def element_embedding(key: PRNGKeyArray, dim: int) -> Float[Array, "nelement dim"]:
    """A learnable table of element embeddings, `(MAX_ATOMIC_NUMBER + 1, dim)`, N(0, 0.1²)."""
    return 0.1 * jr.normal(key, (MAX_ATOMIC_NUMBER + 1, dim), dtype=jnp.float64)


def cosine_cutoff(r: Float[Array, "*shape"], cutoff: float) -> Float[Array, "*shape"]:
    """f_c(r) = ½(cos(πr/cutoff) + 1) for r < cutoff, 0 beyond: smooth, 1 at r = 0."""
    return jnp.where(r < cutoff, 0.5 * (jnp.cos(math.pi * r / cutoff) + 1.0), 0.0)


def gaussian_basis(r: Float[Array, "*shape"], cutoff: float, n: int) -> Float[Array, "*shape n"]:
    """n Gaussians of width cutoff/n centred on [0, cutoff], times the cosine cutoff, `(..., n)`."""
    centres = jnp.linspace(0.0, cutoff, n)
    width = cutoff / n
    fc = cosine_cutoff(r, cutoff)
    return jnp.exp(-((r[..., None] - centres) ** 2) / (2 * width**2)) * fc[..., None]


def slot_basis(coords, atom_coords, index, mask, widths, cutoff, lmax, shift=None):
    """R_n(|r_g − R_A − T|) `(ngrid, nrad)` and Y_lm(r̂_gA) `(ngrid, (lmax+1)²)` for one neighbour
    slot (atom A = `index[g]` of each grid point g, displaced by the lattice translation
    T = `shift[g]`, `(ngrid, 3)` Bohr, or T = 0 when `shift` is `None`; zero where `mask` is false).

    Gaussian radial functions exp(−r²/(2σ_n²)) times the cosine cutoff, and e3nn's real spherical
    harmonics (component normalisation) of the unit vectors from the atom to the grid point
    (a 1e-24 shift keeps r = 0 finite; Y_lm there is multiplied by R_n and the density).
    """
    positions = atom_coords[index] if shift is None else atom_coords[index] + shift
    vectors = coords - positions  # (ngrid, 3)
    r2 = jnp.sum(vectors**2, axis=-1)
    r = jnp.sqrt(r2 + 1e-24)
    envelope = jnp.where(mask, cosine_cutoff(r, cutoff), 0.0)
    radial = jnp.exp(-r2[:, None] / (2.0 * jnp.asarray(widths) ** 2)) * envelope[:, None]
    sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(lmax), vectors / r[:, None],
                                  normalize=False, normalization="component").array
    return radial, sh


def scan_slots(body, init, neighbours):
    """Run `carry = body(carry, index_j, mask_j)` over the neighbour slots j (a `lax.scan`, so the
    (grid point, slot) products are never all in memory at once)."""

    def step(carry, xs):
        return body(carry, *xs), None

    carry, _ = jax.lax.scan(step, init, (neighbours.index.T, neighbours.mask.T))
    return carry


def scan_image_slots(body, init, neighbours):
    """Run `carry = body(carry, index_j, mask_j, shift_j)` over the neighbour slots j, with
    `shift_j` `(ngrid, 3)` the lattice translation (Bohr) of each slot's atom image
    (`neighbours.translations[neighbours.image[:, j]]`; zero for a molecule). A `lax.scan`, as
    `scan_slots`."""

    def step(carry, xs):
        index, mask, image = xs
        return body(carry, index, mask, neighbours.translations[image]), None

    carry, _ = jax.lax.scan(step, init, (neighbours.index.T, neighbours.mask.T, neighbours.image.T))
    return carry


def atom_interaction(h, atom_coords, mask, radial_weights, cutoff, lmax, message, update, translations=None):
    """One equivariant message-passing step between atoms (and their periodic images).

    m_A = Σ_B Σ_T φ(r_ABT) W(h_B ⊗ Y(r̂_ABT)), r_ABT = R_B + T − R_A, over the lattice
    translations T = `translations` `(nimage, 3)` Bohr (`None`: T = 0 alone, a molecule) and all
    (B, T) but (A, 0); φ = Gaussian basis · `radial_weights` (cosine cutoff), and returns
    h + W'(m); `message` = W and `update` = W' are e3nn linear layers; pairs involving a masked
    (padded) atom carry no message. Cost O(natom² · nimage) tensor products.
    """
    translations = jnp.zeros((1, 3), dtype=atom_coords.dtype) if translations is None else translations
    natom, nimage = atom_coords.shape[0], translations.shape[0]
    # the images (B, T) flattened to one axis j = B · nimage + T: R_B + T − R_A, (A, j, 3)
    vectors = (atom_coords[None, :, None, :] + translations[None, None, :, :]
               - atom_coords[:, None, None, :]).reshape(natom, natom * nimage, 3)
    r = jnp.sqrt(jnp.sum(vectors**2, axis=-1) + 1e-24)
    is_zero = jnp.all(translations == 0.0, axis=-1)
    pair = (mask[:, None, None] & mask[None, :, None]
            & ~(jnp.eye(natom, dtype=bool)[:, :, None] & is_zero[None, None, :])).reshape(natom, natom * nimage)
    phi = jnp.where(pair, gaussian_basis(r, cutoff, radial_weights.shape[0]) @ radial_weights, 0.0)
    sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(lmax), vectors / r[..., None],
                                  normalize=False, normalization="component")
    images = jnp.repeat(h.array, nimage, axis=0)  # h_B for every (B, T)
    hb = e3nn.IrrepsArray(h.irreps, jnp.broadcast_to(images[None], (natom,) + images.shape))
    messages = jax.vmap(jax.vmap(message))(e3nn.tensor_product(hb, sh))
    m = e3nn.IrrepsArray(messages.irreps, jnp.einsum("ab,abi->ai", phi, messages.array))
    return h + jax.vmap(update)(m)


def pbe_exchange_enhancement(s2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """PBE's F_x(s) = 1 + κ − κ²/(κ + μ s²) from s² (dimensionless; κ = 0.804, μ = 0.21951).

    Perdew, Burke, Ernzerhof, Phys. Rev. Lett. 77, 3865 (1996), doi:10.1103/PhysRevLett.77.3865.
    """
    return 1.0 + PBE_KAPPA - PBE_KAPPA**2 / (PBE_KAPPA + PBE_MU * s2)
