"""Davidson-type eigensolvers on operator products, for TDA and RPA (private).

The subspace algebra is small (a few hundred vectors at most) and runs in NumPy; each
iteration applies the (compiled) operator to one block of vectors of fixed size, so the
operator compiles once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Block = Callable[[np.ndarray], np.ndarray]


class DavidsonResult:
    """Eigenpairs from [`davidson_tda`][] / [`davidson_rpa`][] (plain NumPy; private)."""

    def __init__(self, energies, xpy, xmy, converged, iterations, residuals):
        self.energies = energies
        self.xpy = xpy
        self.xmy = xmy
        self.converged = converged
        self.iterations = iterations
        self.residuals = residuals


def _initial(diagonal: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(diagonal, kind="stable")[:k]
    v = np.zeros((k, diagonal.size))
    v[np.arange(k), order] = 1.0
    return v


def _orthonormal_new(basis: np.ndarray, candidates: np.ndarray, threshold: float = 1e-6) -> np.ndarray:
    """The part of `candidates` (rows) orthogonal to `basis` (orthonormal rows), orthonormalised;
    (nearly) dependent candidates are dropped."""
    kept = []
    for c in candidates:
        norm0 = np.linalg.norm(c)
        if norm0 == 0 or not np.isfinite(norm0):
            continue
        c = c / norm0
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            if basis.shape[0]:
                c = c - basis.T @ (basis @ c)
            for k in kept:
                c = c - (k @ c) * k
        norm = np.linalg.norm(c)
        if norm > threshold:
            kept.append(c / norm)
    return np.array(kept).reshape(len(kept), candidates.shape[1])


def _precondition(residuals: np.ndarray, diagonal: np.ndarray, energies: np.ndarray) -> np.ndarray:
    denominator = diagonal[None, :] - energies[:, None]
    denominator = np.where(np.abs(denominator) < 1e-4, np.copysign(1e-4, denominator + 1e-300), denominator)
    return residuals / denominator


def _pad(vectors: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((size, vectors.shape[1]))
    out[: vectors.shape[0]] = vectors
    return out


def davidson_tda(apply: Block, diagonal: np.ndarray, n_states: int, block_size: int, *,
                 tolerance: float, max_iterations: int, max_space: int) -> DavidsonResult:
    """The `n_states` lowest eigenpairs of the symmetric A (Davidson, J. Comput. Phys. 17, 87
    (1975), doi:10.1016/0021-9991(75)90065-0), with the diagonal ε_a − ε_i as preconditioner.

    `apply(V)` returns A V for a block `(block_size, dim)` (rows are vectors)."""
    dim = diagonal.size
    basis = _orthonormal_new(np.zeros((0, dim)), _initial(diagonal, block_size))
    products = apply(_pad(basis, block_size))[: basis.shape[0]]
    residual_norms = np.full(n_states, np.inf)
    for iteration in range(1, max_iterations + 1):
        small = basis @ products.T
        small = 0.5 * (small + small.T)
        w, u = np.linalg.eigh(small)
        w, u = w[:n_states], u[:, :n_states]
        x = u.T @ basis
        residuals = u.T @ products - w[:, None] * x
        residual_norms = np.linalg.norm(residuals, axis=1)
        if np.all(residual_norms < tolerance) or basis.shape[0] == dim:
            return DavidsonResult(w, x, x, True, iteration, residual_norms)
        unconverged = residual_norms >= tolerance
        new = _orthonormal_new(basis, _precondition(residuals[unconverged], diagonal, w[unconverged]))
        if new.shape[0] == 0:
            return DavidsonResult(w, x, x, bool(np.all(residual_norms < 10 * tolerance)), iteration,
                                  residual_norms)
        if basis.shape[0] + new.shape[0] > max_space:  # restart from the current Ritz vectors
            basis, products = x, u.T @ products
            new = _orthonormal_new(basis, new)
        new_products = np.concatenate([apply(_pad(new[i:i + block_size], block_size))[: len(new[i:i + block_size])]
                                       for i in range(0, new.shape[0], block_size)])
        basis = np.concatenate([basis, new])
        products = np.concatenate([products, new_products])
    return DavidsonResult(w, x, x, False, max_iterations, residual_norms)


def _rpa_subspace(basis, plus, minus, n_states):
    mp = basis @ plus.T
    mm = basis @ minus.T
    mp, mm = 0.5 * (mp + mp.T), 0.5 * (mm + mm.T)
    lam, vec = np.linalg.eigh(mm)
    if lam.min() <= 0:
        raise np.linalg.LinAlgError("A − B is not positive definite in the subspace (an unstable reference)")
    root = (vec * np.sqrt(lam)) @ vec.T
    w2, t = np.linalg.eigh(root @ mp @ root)
    w2, t = w2[:n_states], t[:, :n_states]
    if w2.min() <= 0:
        raise np.linalg.LinAlgError("an imaginary RPA excitation energy (an unstable reference)")
    w = np.sqrt(w2)
    u = root @ t / np.sqrt(w)  # X + Y coefficients, (X+Y)·(X−Y) = 1
    v = mp @ u / w  # X − Y coefficients
    return w, u, v


def davidson_rpa(apply: Block, diagonal: np.ndarray, n_states: int, block_size: int, *,
                 tolerance: float, max_iterations: int, max_space: int) -> DavidsonResult:
    """The `n_states` lowest positive roots ω of (A − B)(A + B)(X + Y) = ω² (X + Y).

    The subspace form of Stratmann, Scuseria & Frisch, J. Chem. Phys. 109, 8218 (1998),
    doi:10.1063/1.477483: with an orthonormal basis V, M± = Vᵀ(A ± B)V, the small problem
    M₋^{1/2} M₊ M₋^{1/2} t = ω² t gives X + Y = V M₋^{1/2} t/√ω, X − Y = V M₊ (X+Y)/ω,
    normalised to (X + Y)·(X − Y) = 1; both residuals (A + B)(X + Y) − ω(X − Y) and
    (A − B)(X − Y) − ω(X + Y) are preconditioned with (ε_a − ε_i − ω)⁻¹ and added to V.

    `apply(V)` returns ((A + B) V, (A − B) V) for a block `(block_size, dim)`."""
    dim = diagonal.size
    basis = _orthonormal_new(np.zeros((0, dim)), _initial(diagonal, block_size))
    plus, minus = (p[: basis.shape[0]] for p in apply(_pad(basis, block_size)))
    residual_norms = np.full(n_states, np.inf)
    for iteration in range(1, max_iterations + 1):
        w, u, v = _rpa_subspace(basis, plus, minus, n_states)
        xpy, xmy = u.T @ basis, v.T @ basis
        r1 = u.T @ plus - w[:, None] * xmy
        r2 = v.T @ minus - w[:, None] * xpy
        residual_norms = np.maximum(np.linalg.norm(r1, axis=1), np.linalg.norm(r2, axis=1))
        if np.all(residual_norms < tolerance) or basis.shape[0] == dim:
            return DavidsonResult(w, xpy, xmy, True, iteration, residual_norms)
        unconverged = residual_norms >= tolerance
        candidates = np.concatenate([_precondition(r1[unconverged], diagonal, w[unconverged]),
                                     _precondition(r2[unconverged], diagonal, w[unconverged])])
        new = _orthonormal_new(basis, candidates)
        if new.shape[0] == 0:
            return DavidsonResult(w, xpy, xmy, bool(np.all(residual_norms < 10 * tolerance)), iteration,
                                  residual_norms)
        if basis.shape[0] + new.shape[0] > max_space:  # restart from the Ritz vectors
            keep = _orthonormal_new(np.zeros((0, dim)), np.concatenate([xpy, xmy]))
            coefficients = keep @ basis.T
            basis, plus, minus = keep, coefficients @ plus, coefficients @ minus
            new = _orthonormal_new(basis, new)
        blocks = [apply(_pad(new[i:i + block_size], block_size)) for i in range(0, new.shape[0], block_size)]
        counts = [len(new[i:i + block_size]) for i in range(0, new.shape[0], block_size)]
        basis = np.concatenate([basis, new])
        plus = np.concatenate([plus] + [b[0][:c] for b, c in zip(blocks, counts)])
        minus = np.concatenate([minus] + [b[1][:c] for b, c in zip(blocks, counts)])
    return DavidsonResult(w, xpy, xmy, False, max_iterations, residual_norms)


def dense_tda(a: np.ndarray, n_states: int) -> DavidsonResult:
    """The `n_states` lowest eigenpairs of a dense symmetric A (test reference)."""
    w, x = np.linalg.eigh(0.5 * (a + a.T))
    x = x[:, :n_states].T
    return DavidsonResult(w[:n_states], x, x, True, 0, np.zeros(n_states))


def dense_rpa(apb: np.ndarray, amb: np.ndarray, n_states: int) -> DavidsonResult:
    """The `n_states` lowest RPA roots from dense A + B, A − B (the symmetric form
    (A − B)^{1/2} (A + B) (A − B)^{1/2} T = ω² T; test reference)."""
    basis = np.eye(apb.shape[0])
    w, u, v = _rpa_subspace(basis, apb.T, amb.T, n_states)
    return DavidsonResult(w, u.T, v.T, True, 0, np.zeros(n_states))
