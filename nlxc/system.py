"""`System`: a molecule, its basis, grid and integrals as a pytree of arrays.

PySCF computes everything here once, in numpy; downstream everything is JAX.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import difflib
import functools
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._ao_values import AOBasis
from ._ao_values import ao_values as _evaluate_ao
from ._ao_values import basis_data as _basis_data
from ._errors import InputError
from .constants import ANGSTROM_TO_BOHR
from .grid_operators import AuxiliaryGridOperators, GridOperatorSpec, build_grid_operators

MIN_ATOM_DISTANCE_ANGSTROM = 0.1
MAX_GRID_LEVEL = 9

# PySCF (gto.basis.load) warns "Basis may be available in basis-set-exchange. It is recommended
# to install basis-set-exchange" whenever a basis file lacks an element, which is also how
# `df.make_auxbasis` probes for a fitting basis before it falls back to even-tempered functions.
BASIS_SET_EXCHANGE_WARNING = r"(Basis|ECP) may be available in basis-set-exchange"
"""Regular expression matching PySCF's "install basis-set-exchange" hint (a `UserWarning`)."""


@contextlib.contextmanager
def quiet_basis_lookup() -> Iterator[None]:
    """Silence PySCF's "install basis-set-exchange" `UserWarning` (only that one) in the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=BASIS_SET_EXCHANGE_WARNING, category=UserWarning)
        yield


def _basis_key(name: str) -> str:
    """A basis name as PySCF looks it up: lower case, without '-', '_', spaces, '@…'."""
    return name.split("@")[0].lower().replace("-", "").replace("_", "").replace(" ", "")


# A Pople basis name as PySCF composes it from files (`_format_basis_name` form, before any
# '@'): a base set (6-31G, 6-311G, 3-21G, 4-31G with up to two '+'), '*'/'**' (or 's'/'ss'), and
# polarisation functions in parentheses, e.g. "6-311++G(2df,2pd)" -> "6311++g(2df,2pd)".
_POPLE_NAME = re.compile(r"(?P<base>(?:6311?|321|431)\+{0,2}g(?:\*{1,2}|s{1,2})?)"
                         r"(?:\((?P<pol>[a-z0-9,]+)\))?")


def _is_known_basis_name(name: str) -> bool:
    """Whether PySCF's basis loader resolves `name` to basis data it ships (or the user registered).

    Decided from the name alone, as `pyscf.gto.basis.load` resolves it: a file, an entry of
    PySCF's alias tables, or a Pople name whose base set is in the table and whose polarisation
    files exist (`pople-basis/<base>-polarization-<shell>.dat`, the files PySCF composes such a
    name from). PySCF versions differ in which exception an unknown name raises (2.14: `KeyError`
    for a Pople-like name such as "6-31gg"; 2.15: `BasisNotFoundError`), so the message of
    `check_basis` does not depend on it.
    """
    from pyscf.gto import basis as pyscf_basis

    if os.path.isfile(name.split("@")[0]):
        return True
    key = _basis_key(name)
    if any(key in table for table in (pyscf_basis.ALIAS, pyscf_basis.GTH_ALIAS,
                                      pyscf_basis.USER_BASIS_ALIAS, pyscf_basis.USER_GTH_ALIAS)):
        return True
    pople = _POPLE_NAME.fullmatch(key)
    if pople is None or pople["base"] not in pyscf_basis.ALIAS:
        return False
    stem = pople["base"][0] + "-" + pople["base"][1:].upper().replace("+", "").replace("*", "")
    shells = re.findall(r"\d*[a-z]", (pople["pol"] or "").replace(",", ""))
    folder = os.path.join(os.path.dirname(pyscf_basis.__file__), "pople-basis")
    return all(os.path.isfile(os.path.join(folder, f"{stem}-polarization-{shell}.dat")) for shell in shells)


def _basis_hint(name: str) -> str:
    """` (did you mean 'NAME'?)` for the closest basis name PySCF knows, or `''`."""
    from pyscf.gto import basis as pyscf_basis

    names: dict[str, str] = {}
    for key, module in pyscf_basis.ALIAS.items():
        stem = os.path.basename(module).removesuffix(".dat") if isinstance(module, str) else key
        names[key] = stem if _basis_key(stem) == key else key
    match = difflib.get_close_matches(_basis_key(name), list(names), n=1, cutoff=0.8)
    return f" (did you mean {names[match[0]]!r}?)" if match else ""


def check_basis(name: str, symbols: Sequence[str], *, kind: str = "basis") -> None:
    """Check that PySCF has basis `name` for every element of `symbols`.

    **Arguments:**

    - `name`: a basis-set name (e.g. `"def2-svp"`), a file PySCF can read, or basis text in
      NWChem format (which is not checked here; PySCF parses it when the `Mole` is built).
    - `symbols`: element symbols, e.g. `["O", "H", "H"]`.
    - `kind`: how the message names the basis, e.g. `"auxiliary basis"`.

    **Raises:** [`nlxc.InputError`][] (one line) for a name PySCF does not know (with the
    closest known name, if one is close) or a basis without functions for some element.
    """
    from pyscf.gto import basis as pyscf_basis
    from pyscf.lib.exceptions import BasisNotFoundError

    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{kind} must be a basis-set name, got {name!r}")
    if "\n" in name:
        return
    elements = sorted(set(symbols))
    missing = []
    with quiet_basis_lookup():
        for symbol in elements:
            try:
                pyscf_basis.load(name, symbol)
            # KeyError (PySCF < 2.15): a Pople-like name it cannot parse; FileNotFoundError: a
            # Pople name with polarisation functions PySCF has no file for, e.g. "6-31g(x)"
            except (BasisNotFoundError, KeyError, FileNotFoundError):
                missing.append(symbol)
    if not missing:
        return
    # whether the name is unknown is decided from the name (not from which exception PySCF raised)
    if len(missing) < len(elements) or _is_known_basis_name(name):
        raise InputError(f"{kind} {name!r} has no functions for {', '.join(missing)}")
    raise InputError(f"unknown {kind} {name!r}{_basis_hint(name)}")


def _on_device(x, dtype=None) -> Array:
    """A NumPy array (or number) as a device array, converted in NumPy first (private).

    `jax.device_put` transfers without compiling anything, whereas `jnp.asarray` of a NumPy
    array compiles (and runs) a small program per shape and dtype: about 15 per System built,
    and as many per stacked batch."""
    if isinstance(x, jax.Array) and (dtype is None or x.dtype == dtype):
        return x
    return jax.device_put(np.asarray(x, dtype=dtype))


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _write_block(buffer, block, start, axis):
    """buffer[..., start:start+len(block), ...] = block along `axis` (in place when donated)."""
    index = [0] * buffer.ndim
    index[axis] = start
    return jax.lax.dynamic_update_slice(buffer, block.astype(buffer.dtype), tuple(index))


@functools.lru_cache(maxsize=64)
def _tril_index(nao: int) -> np.ndarray:
    """(nao, nao) int32: the position of (μ, ν) in the packed lower triangle (symmetric)."""
    rows, cols = np.tril_indices(nao)
    index = np.zeros((nao, nao), dtype=np.int32)
    index[rows, cols] = index[cols, rows] = np.arange(len(rows), dtype=np.int32)
    index.setflags(write=False)
    return index


def packed_size(nao: int) -> int:
    """nao(nao+1)/2: the length of a packed symmetric `(nao, nao)` matrix."""
    return nao * (nao + 1) // 2


def unpack_tril(packed: Float[Array, "*batch npair"], nao: int) -> Float[Array, "*batch nao nao"]:
    """The symmetric matrices `(..., nao, nao)` of their packed lower triangles `(..., nao(nao+1)/2)`
    (row by row, μ ≥ ν: PySCF's `lib.pack_tril` order)."""
    return jnp.take(packed, jnp.asarray(_tril_index(nao)), axis=-1)


def pack_symmetric(matrix: Float[Array, "*batch nao nao"]) -> Float[Array, "*batch npair"]:
    """Packed weights w `(..., nao(nao+1)/2)` of matrices M `(..., nao, nao)` such that
    Σ_μν B_μν M_μν = Σ_k b_k w_k for every symmetric B with packed lower triangle b: w holds
    M_μν + M_νμ for μ > ν and M_μμ on the diagonal (in [`unpack_tril`][nlxc.system.unpack_tril]'s
    order). Linear in M, so its derivative is exact."""
    nao = matrix.shape[-1]
    rows, cols = np.tril_indices(nao)
    both = matrix + jnp.swapaxes(matrix, -1, -2)
    half = np.where(rows == cols, 0.5, 1.0)
    return both[..., rows, cols] * half


GRID_BLOCK_SIZE = 192
"""Default number of grid points per block of the AO values (`System.from_pyscf(grid_block_size=...)`)."""

AO_SCREENING_THRESHOLD = 1e-10
"""Default AO screening threshold (`System.from_pyscf(ao_threshold=...)`): a basis function enters a
block of grid points only if max(|φ|, |∂xφ|, |∂yφ|, |∂zφ|) over the block's points exceeds it."""

# Padded sizes of the per-block AO lists: 4·2^(k/2) rounded up to a multiple of 4 (4, 8, 12, 16,
# 24, 32, 48, 64, 92, 128, 184, 256, 364, ...), capped at nao; a System uses at most
# `_MAX_AO_GROUPS` of them (the fewest within 5 % of the dense store of the best choice), one compiled loop over blocks
# each: adenine–thymine (def2-SVP, grid level 3) stores 49 % of the dense AO values with 4 sizes,
# 48 % with all 10 it would use, 41 % without padding.
_AO_LIST_SIZES = tuple(sorted({-(-math.ceil(4 * 2 ** (k / 2)) // 4) * 4 for k in range(48)}))
_MAX_AO_GROUPS = 4
_GROUP_SAVING = 0.05  # a further group must save 5 % of the dense AO values
_NO_BLOCK = np.iinfo(np.int32).max  # the grid position of a filler block (dropped on assembly)


def _padded_list_size(n: int, nao: int) -> int:
    """The padded length of a block's AO list holding `n` functions, for `nao` functions in all."""
    return min(next(s for s in _AO_LIST_SIZES if s >= n), nao)


def _choose_list_sizes(sizes: np.ndarray, max_groups: int) -> list[int]:
    """At most `max_groups` of the distinct values in `sizes` (always the largest): the fewest
    whose Σ_b (smallest chosen size ≥ sizes[b]) is within `_GROUP_SAVING` of the dense store of
    the smallest such sum (exact dynamic programme, private)."""
    values, counts = np.unique(sizes, return_counts=True)
    n = len(values)
    below = np.concatenate([[0], np.cumsum(counts)])  # blocks of sizes values[:j]
    inf = float("inf")
    cost = np.full((max_groups + 1, n), inf)  # cost[k, j]: values[:j+1] in k groups, the last values[j]
    back = np.zeros((max_groups + 1, n), dtype=int)
    cost[1] = below[1:] * values
    for k in range(2, max_groups + 1):
        for j in range(n):
            for i in range(j):
                c = cost[k - 1, i] + (below[j + 1] - below[i + 1]) * values[j]
                if c < cost[k, j]:
                    cost[k, j], back[k, j] = c, i
    # every group is one more compiled loop (in the forward, reverse and forward-over-reverse passes
    # of every Fock build): take the fewest groups whose stored values are within `_GROUP_SAVING`
    # of the dense store of the best choice (small molecules, whose blocks hold nearly every AO,
    # get one group)
    totals = cost[1:, n - 1]
    slack = _GROUP_SAVING * below[-1] * values[-1]
    k = int(np.argmax(totals <= totals.min() + slack)) + 1
    chosen, j = [], n - 1
    while k >= 1:
        chosen.append(int(values[j]))
        j, k = back[k, j], k - 1
    return sorted(chosen)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """The static shape of a System's screened AO blocks ([`AOBlocks`][nlxc.system.AOBlocks]).

    - `block_size`: grid points per block.
    - `groups`: `((list_size, nblock), ...)`: for each group, the padded length of its blocks' AO
      lists and its number of blocks, by increasing list size.
    - `basis`: for recomputed AO blocks ([`RecomputedAOBlocks`][nlxc.system.RecomputedAOBlocks]),
      the padded sizes `(nprim, lmax)` of their basis data (primitives per function, highest
      angular momentum); `None` for stored AO values.

    Systems of equal layout (and equal `nao`, `naux`, `ngrid`, atom count) can be stacked.
    """

    block_size: int
    groups: tuple[tuple[int, int], ...]
    basis: tuple[int, int, int] | None = None

    @classmethod
    def covering(cls, layouts: Sequence[BlockLayout], nao: int) -> BlockLayout:
        """The smallest layout of the standard list sizes (capped at `nao`) that holds each of
        `layouts`: a group of list size s goes to the smallest covering size ≥ s, and each
        covering group has as many blocks as the largest number any layout puts there.

        The basis-data sizes (recomputed AO blocks) are the largest of each.

        **Raises:** `ValueError` for layouts of different block sizes, of stored and recomputed
        AO blocks mixed, an empty list, or a list size above `nao`.
        """
        layouts = list(layouts)
        if not layouts:
            raise ValueError("no layouts to cover")
        sizes = {x.block_size for x in layouts}
        if len(sizes) > 1:
            raise ValueError(f"Systems have different grid block sizes {sorted(sizes)}")
        if len({x.basis is None for x in layouts}) > 1:
            raise ValueError("cannot combine Systems of stored and of recomputed AO values (ao_storage)")
        basis = None if layouts[0].basis is None else tuple(int(max(s)) for s in zip(*(x.basis for x in layouts)))
        counts: dict[int, int] = {}
        for layout in layouts:
            mine: dict[int, int] = {}
            for size, n in layout.groups:
                if size > nao:
                    raise ValueError(f"an AO list of {size} functions does not fit nao={nao}")
                target = _padded_list_size(size, nao)
                mine[target] = mine.get(target, 0) + n
            for target, n in mine.items():
                counts[target] = max(counts.get(target, 0), n)
        return cls(layouts[0].block_size, tuple(sorted(counts.items())), basis)


class AbstractAOBlocks(eqx.Module):
    """AO values and gradients on the grid by blocks of grid points, screened: the common
    interface of the stored ([`AOBlocks`][nlxc.system.AOBlocks]) and recomputed
    ([`RecomputedAOBlocks`][nlxc.system.RecomputedAOBlocks]) forms.

    The grid (in PySCF's order, which groups nearby points) is cut into blocks of `block_size`
    consecutive points (the last one zero-padded). For each block only the basis functions that
    are non-negligible on it are listed: function μ enters block b if
    max over b's points of max(|φ_μ|, |∂xφ_μ|, |∂yφ_μ|, |∂zφ_μ|) exceeds the System's screening
    threshold ([`AO_SCREENING_THRESHOLD`][nlxc.system.AO_SCREENING_THRESHOLD] by default;
    PySCF's numint screens whole shells per block of 56 points the same way, against
    `grids.cutoff`). A block's list is padded to one of a few sizes (entries pointing at AO 0,
    with zero values) and blocks of equal padded size form a group, so that every shape is
    static. Group k has:

    - `indices[k]`: the listed functions' AO indices, `(nblock_k, size_k)` (int32).
    - `positions[k]`: each block's number along the grid (block b covers grid points
      `b·block_size … (b+1)·block_size − 1`), `(nblock_k,)` (int32); filler blocks (added by
      padding to a common layout) hold `2³¹ − 1` and are never read back.

    Grid blocks in no group (those added by padding the grid) have zero AO values.
    Use [`System.map_grid_blocks`][nlxc.System.map_grid_blocks] to evaluate grid quantities
    block by block, [`System.ao_values`][nlxc.System.ao_values] for the dense array.
    """

    indices: eqx.AbstractVar[tuple[Int[Array, "nblock nsub"], ...]]
    positions: eqx.AbstractVar[tuple[Int[Array, " nblock"], ...]]

    @property
    @abc.abstractmethod
    def block_size(self) -> int:
        """Grid points per block."""

    @property
    def layout(self) -> BlockLayout:
        """The static [`BlockLayout`][nlxc.system.BlockLayout] (a stacked batch: of one entry)."""
        return BlockLayout(self.block_size, tuple((i.shape[-1], i.shape[-2]) for i in self.indices))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays held."""
        return sum(x.nbytes for x in jax.tree.leaves(self))

    @abc.abstractmethod
    def _group(self, k: int):
        """The per-block inputs of group k (a pytree with a leading block axis)."""

    @abc.abstractmethod
    def _block(self, inputs) -> tuple[Float[Array, "4 block nsub"], Int[Array, " nsub"]]:
        """One block's AO values and gradients and AO indices from its inputs."""

    @abc.abstractmethod
    def relayout(self, layout: BlockLayout, xp=np) -> AbstractAOBlocks:
        """The same blocks in `layout` (a covering one, see
        [`BlockLayout.covering`][nlxc.system.BlockLayout.covering]): each group moves to the
        smallest list size of `layout` at least its own, lists padded with AO 0 at zero value,
        groups filled with zero blocks. `xp` is `numpy` (host) or `jax.numpy`.

        **Raises:** `ValueError` if `layout` does not hold these blocks.
        """

    @abc.abstractmethod
    def pad_functions(self, nao: int, xp=np) -> AbstractAOBlocks:
        """The same blocks for a basis padded to `nao` functions (the padded ones in no list)."""

    def map(self, fn: Callable, ngrid: int):
        """Evaluate `fn(ao, indices)` on every block and assemble the results along the grid.

        `fn` receives one block's `ao` `(4, block_size, size)` and `indices` `(size,)` and
        returns a pytree of arrays whose last axis is the block's points `(..., block_size)`;
        the result is the same pytree with last axis `ngrid` (zero on points of no block).
        The blocks of each group run in a `jax.lax.map` of the checkpointed `fn` (with the
        evaluation of the block's AO values, for recomputed blocks), so reverse mode stores no
        per-block intermediate beyond the block's inputs: memory O(block · nao) for the work of
        one block, plus `fn`'s closed-over operands and the outputs.
        """
        block = self.block_size
        nblock = -(-ngrid // block)
        body = jax.checkpoint(lambda xs: fn(*self._block(xs)), prevent_cse=False)
        full = None
        for k, positions in enumerate(self.positions):
            out = jax.lax.map(body, self._group(k))
            if full is None:
                full = jax.tree.map(lambda y: jnp.zeros((nblock,) + y.shape[1:], y.dtype), out)
            full = jax.tree.map(lambda f, y: f.at[positions].set(y, mode="drop"), full, out)

        def assemble(f):
            f = jnp.moveaxis(f, 0, -2)
            return f.reshape(f.shape[:-2] + (nblock * block,))[..., :ngrid]

        return jax.tree.map(assemble, full)

    def dense(self, ngrid: int, nao: int) -> Float[Array, "4 ngrid nao"]:
        """The AO values and gradients on the whole grid, `(4, ngrid, nao)` (screened-out ones
        zero). Memory O(ngrid · nao): for tests and diagnostics, not for the SCF."""
        def fn(ao, indices):
            return jnp.moveaxis(jnp.zeros((4, ao.shape[1], nao), ao.dtype).at[:, :, indices].add(ao), 1, -1)

        return jnp.moveaxis(self.map(fn, ngrid), -1, 1)

    def _moved_groups(self, layout: BlockLayout, arrays, fillers, xp):
        """Group-wise relayout shared by the subclasses (private): `arrays[k]` is a tuple of
        group k's per-block arrays, the AO-list axis (if any) last but `list_axes[i]` from the
        end; `fillers(size, n)` makes n filler blocks. Returns the new groups as tuples."""
        if layout.block_size != self.block_size:
            raise ValueError(f"cannot change the grid block size from {self.block_size} to {layout.block_size}")
        targets = [size for size, _ in layout.groups]
        moved: dict[int, list] = {size: [] for size in targets}
        for k, group in enumerate(arrays):
            size = self.indices[k].shape[-1]
            target = next((t for t in targets if t >= size), None)
            if target is None:
                raise ValueError(f"the layout has no AO list of {size} functions or more")
            moved[target].append(tuple(pad(xp.asarray(x), target - size) for x, pad in group))
        out = []
        for size, count in layout.groups:
            parts = moved[size]
            have = sum(p[0].shape[0] for p in parts)
            if have > count:
                raise ValueError(f"{have} blocks do not fit the layout's {count} of list size {size}")
            parts = parts + [fillers(size, count - have)]
            out.append(tuple(xp.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))))
        return out


class AOBlocks(AbstractAOBlocks):
    """AO values and gradients on the grid, stored by blocks of grid points, screened (see
    [`AbstractAOBlocks`][nlxc.system.AbstractAOBlocks]; `System.from_pyscf(...,
    ao_storage="stored")`, the default). Group k holds:

    - `values[k]`: φ, ∂xφ, ∂yφ, ∂zφ of the listed functions, `(nblock_k, 4, block_size, size_k)`
      (PySCF's `eval_ao` values; zero for padded list entries and padded points).
    - `indices[k]`, `positions[k]`: as in `AbstractAOBlocks`.
    """

    values: tuple[Float[Array, "nblock 4 block nsub"], ...]
    indices: tuple[Int[Array, "nblock nsub"], ...]
    positions: tuple[Int[Array, " nblock"], ...]

    def __init__(self, values, indices, positions):
        self.values, self.indices, self.positions = tuple(values), tuple(indices), tuple(positions)

    @property
    def block_size(self) -> int:
        """Grid points per block."""
        return self.values[0].shape[-2]

    def _group(self, k):
        return self.values[k], self.indices[k]

    def _block(self, inputs):
        return inputs

    def relayout(self, layout: BlockLayout, xp=np) -> AOBlocks:
        """The same blocks in `layout` (a covering one, see
        [`BlockLayout.covering`][nlxc.system.BlockLayout.covering]): each group moves to the
        smallest list size of `layout` at least its own, lists padded with AO 0 at zero value,
        groups filled with zero blocks. `xp` is `numpy` (host) or `jax.numpy`.

        **Raises:** `ValueError` if `layout` does not hold these blocks, or `layout` describes
        recomputed blocks (`layout.basis` set).
        """
        if layout.basis is not None:
            raise ValueError("a layout of recomputed AO blocks cannot hold stored ones")

        def last(n):
            return lambda x, extra: xp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, extra),)) if n else x

        groups = [((v, last(1)), (i, last(1)), (p, last(0)))
                  for v, i, p in zip(self.values, self.indices, self.positions)]
        block = self.block_size
        new = self._moved_groups(layout, groups, lambda size, n: (
            xp.zeros((n, 4, block, size)), xp.zeros((n, size), dtype=np.int32),
            xp.full((n,), _NO_BLOCK, dtype=np.int32)), xp)
        return AOBlocks(tuple(g[0] for g in new), tuple(g[1].astype(np.int32) for g in new),
                        tuple(g[2].astype(np.int32) for g in new))

    def pad_functions(self, nao: int, xp=np) -> AOBlocks:
        """The same blocks (padded basis functions enter no list)."""
        return self


class RecomputedAOBlocks(AbstractAOBlocks):
    """Screened blocks of grid points whose AO values and gradients are computed on the fly
    (`System.from_pyscf(..., ao_storage="recomputed")`), from the basis data, each time a block
    is visited by [`map`][nlxc.system.AbstractAOBlocks.map]: the lists, positions and layout
    are those of the stored form, the values equal PySCF's `eval_ao` to rounding (about 1e-15
    relative). Memory per block: `12·block` floats of coordinates instead of
    `4·block·size` of values. Group k holds:

    - `indices[k]`, `positions[k]`: as in [`AbstractAOBlocks`][nlxc.system.AbstractAOBlocks].
    - `counts[k]`: how many entries of each list are real functions, `(nblock_k,)` (int32); the
      others (padding) get zero values.
    - `points[k]`: the coordinates of each block's points, `(nblock_k, block_size, 3)`, Bohr
      (zero for padded points).
    - `npoints[k]`: how many of each block's points are grid points, `(nblock_k,)` (int32); the
      others get zero values.

    and all groups share `basis` (`nlxc.system.AOBasis`): per basis function its centre,
    contracted radial part and cartesian monomials, as PySCF defines them.
    """

    indices: tuple[Int[Array, "nblock nsub"], ...]
    positions: tuple[Int[Array, " nblock"], ...]
    counts: tuple[Int[Array, " nblock"], ...]
    points: tuple[Float[Array, "nblock block 3"], ...]
    npoints: tuple[Int[Array, " nblock"], ...]
    basis: AOBasis

    @property
    def block_size(self) -> int:
        """Grid points per block."""
        return self.points[0].shape[-2]

    @property
    def layout(self) -> BlockLayout:
        """The static [`BlockLayout`][nlxc.system.BlockLayout], with the padded sizes of the
        basis data (`layout.basis`)."""
        return dataclasses.replace(super().layout, basis=self.basis.shape)

    def _group(self, k):
        return self.indices[k], self.counts[k], self.points[k], self.npoints[k]

    def _block(self, inputs):
        indices, count, points, npoint = inputs
        ao = _evaluate_ao(self.basis, indices, points)
        listed = jnp.arange(indices.shape[-1]) < count
        present = jnp.arange(points.shape[-2]) < npoint
        return jnp.where(present[:, None] & listed[None, :], ao, 0.0), indices

    def relayout(self, layout: BlockLayout, xp=np) -> RecomputedAOBlocks:
        """The same blocks in `layout` (a covering one, see
        [`BlockLayout.covering`][nlxc.system.BlockLayout.covering]): each group moves to the
        smallest list size of `layout` at least its own (lists padded with AO 0, not counted),
        groups filled with blocks of no point; the basis data is padded to `layout.basis`
        (unchanged where it is `None`). `xp` is `numpy` (host) or `jax.numpy`.

        **Raises:** `ValueError` if `layout` does not hold these blocks.
        """
        def keep(x, extra):
            return x

        def lists(x, extra):
            return xp.pad(x, ((0, 0), (0, extra)))

        groups = [((i, lists), (p, keep), (c, keep), (q, keep), (n, keep))
                  for i, p, c, q, n in zip(self.indices, self.positions, self.counts, self.points, self.npoints)]
        block = self.block_size
        new = self._moved_groups(layout, groups, lambda size, n: (
            xp.zeros((n, size), dtype=np.int32), xp.full((n,), _NO_BLOCK, dtype=np.int32),
            xp.zeros((n,), dtype=np.int32), xp.zeros((n, block, 3)), xp.zeros((n,), dtype=np.int32)), xp)
        basis = self.basis
        if layout.basis is not None and layout.basis != basis.shape:
            basis = basis.pad(basis.centres.shape[-2], layout.basis, xp=xp)
        column = [tuple(g[j].astype(np.int32) if j != 3 else g[j] for g in new) for j in range(5)]
        return RecomputedAOBlocks(indices=column[0], positions=column[1], counts=column[2], points=column[3],
                                  npoints=column[4], basis=basis)

    def pad_functions(self, nao: int, xp=np) -> RecomputedAOBlocks:
        """The same blocks with the basis data padded by zero functions to `nao`."""
        if nao == self.basis.centres.shape[-2]:
            return self
        return dataclasses.replace(self, basis=self.basis.pad(nao, xp=xp))


# Jitted (module-level, so that calls outside jit reuse one compilation per shape; inside jit
# they are inlined).
@functools.partial(jax.jit, static_argnums=2)
def _orbital_values(blocks, coefficients, ngrid):
    def fn(ao, indices):
        return jnp.einsum("gm,...mk->...kg", ao[0], coefficients[..., indices, :])

    return jnp.swapaxes(blocks.map(fn, ngrid), -1, -2)


@functools.partial(jax.jit, static_argnums=2)
def _density_values(blocks, matrix, ngrid):
    def fn(ao, indices):
        sub = matrix[..., indices[:, None], indices[None, :]]
        return jnp.einsum("gm,...mn,gn->...g", ao[0], sub, ao[0])

    return blocks.map(fn, ngrid)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _dense_ao(blocks, ngrid, nao):
    return blocks.dense(ngrid, nao)


def _screened_ao_blocks(mol, coords, block_size, threshold, chunk_size, storage="stored") -> AbstractAOBlocks:
    """AO values and gradients of `mol` at `coords` (Bohr), screened by blocks (private).

    Two passes over the grid with PySCF's `eval_ao`: the first finds each block's list, the
    second writes the values into the final device buffers, so that no more than one chunk of
    dense AO values is held at a time. With `storage="recomputed"` only the first: the blocks
    keep their points and the basis data instead of values.
    """
    from pyscf import dft

    ngrid, nao = len(coords), mol.nao
    nblock = -(-ngrid // block_size)
    chunk = max(block_size, chunk_size // block_size * block_size)

    def chunks():
        for start in range(0, ngrid, chunk):
            yield start // block_size, dft.numint.eval_ao(mol, coords[start : start + chunk], deriv=1)

    keep = np.zeros((nblock, nao), dtype=bool)
    for first, ao in chunks():
        largest = np.abs(ao).max(axis=0)  # (points, nao)
        starts = np.arange(0, largest.shape[0], block_size)
        keep[first : first + len(starts)] = np.maximum.reduceat(largest, starts, axis=0) > threshold
    sizes = np.array([_padded_list_size(int(n), nao) for n in keep.sum(axis=1)])
    groups = _choose_list_sizes(sizes, _MAX_AO_GROUPS)
    sizes = np.array([next(g for g in groups if g >= n) for n in sizes])
    slot = np.zeros(nblock, dtype=int)
    indices, positions, values = [], [], []
    for size in groups:
        members = np.flatnonzero(sizes == size)
        slot[members] = np.arange(len(members))
        lists = np.zeros((len(members), size), dtype=np.int32)
        for i, b in enumerate(members):
            mine = np.flatnonzero(keep[b])
            lists[i, : len(mine)] = mine
        indices.append(lists)
        positions.append(members.astype(np.int32))
        if storage == "stored":
            values.append(_on_device(np.zeros((len(members), 4, block_size, size))))
    if storage == "recomputed":
        padded = np.zeros((nblock * block_size, 3))
        padded[:ngrid] = coords
        padded = padded.reshape(nblock, block_size, 3)
        counts = keep.sum(axis=1).astype(np.int32)
        npoints = np.minimum(block_size, ngrid - np.arange(nblock) * block_size).astype(np.int32)
        members = [np.flatnonzero(sizes == size) for size in groups]
        return RecomputedAOBlocks(
            indices=tuple(_on_device(x) for x in indices), positions=tuple(_on_device(x) for x in positions),
            counts=tuple(_on_device(counts[m]) for m in members), points=tuple(_on_device(padded[m]) for m in members),
            npoints=tuple(_on_device(npoints[m]) for m in members),
            basis=jax.tree.map(_on_device, _basis_data(mol)))
    group_of = {size: k for k, size in enumerate(groups)}
    for first, ao in chunks():
        for j in range(-(-ao.shape[1] // block_size)):
            b = first + j
            k = group_of[int(sizes[b])]
            mine = np.flatnonzero(keep[b])
            points = ao[:, j * block_size : (j + 1) * block_size]
            block = np.zeros((1, 4, block_size, groups[k]))
            block[0, :, : points.shape[1], : len(mine)] = points[:, :, mine]
            values[k] = _write_block(values[k], block, int(slot[b]), 0)
    return AOBlocks(tuple(values), tuple(_on_device(x) for x in indices), tuple(_on_device(x) for x in positions))


class System(eqx.Module):
    """A molecule with its basis-set integrals, density-fitting tensor and integration grid.

    Every field is an array, so a `System` can be jitted, vmapped over (for equal shapes),
    sharded and saved. Build one with [`System.from_pyscf`][nlxc.System.from_pyscf],
    [`System.from_xyz`][nlxc.System.from_xyz] or [`System.from_ase`][nlxc.System.from_ase].
    All quantities are in atomic units (Hartree, Bohr).

    **Fields** (`nao` basis functions, `nmo` linearly independent orbitals, `naux` auxiliary
    functions, `ngrid` grid points, `natom` atoms):

    - `overlap`: AO overlap matrix S, `(nao, nao)`.
    - `core_hamiltonian`: kinetic + nuclear attraction (+ ECP) matrix, `(nao, nao)`, Hartree.
    - `orthogonalizer`: X with Xᵀ S X = 1 (canonical orthogonalisation, eigenvalues of S below
      1e-8 dropped), `(nao, nmo)`.
    - `cderi_packed`: Cholesky-orthogonalised density-fitting tensor B with
      (μν|λσ) ≈ Σ_Q B_Qμν B_Qλσ, Hartree^½, stored as the lower triangle of each (symmetric)
      B_Q, `(naux, nao(nao+1)/2)` (PySCF's `aosym="s2ij"` layout; half the memory of the full
      tensor). [`cderi`][nlxc.System.cderi] unpacks it to `(naux, nao, nao)` on request;
      [`nlxc.system.unpack_tril`][] and [`nlxc.system.pack_symmetric`][] convert.
    - `ao_blocks`: the AO values and their x, y, z derivatives on the grid, by blocks of grid
      points, screened ([`AOBlocks`][nlxc.system.AOBlocks]): only the basis functions
      non-negligible on a block are stored for it. Grid quantities are evaluated block by block
      with [`map_grid_blocks`][nlxc.System.map_grid_blocks],
      [`orbital_values`][nlxc.System.orbital_values] and
      [`density_values`][nlxc.System.density_values]; [`ao_values`][nlxc.System.ao_values]
      rebuilds the dense `(4, ngrid, nao)` array on request. With
      `from_pyscf(..., ao_storage="recomputed")` the blocks keep their points and the basis data
      instead, and recompute the values per block on every visit
      ([`RecomputedAOBlocks`][nlxc.system.RecomputedAOBlocks]): same results, a fraction of
      the memory, more work per grid evaluation.
    - `grid_coords` `(ngrid, 3)` Bohr and `grid_weights` `(ngrid,)` Bohr³: PySCF's molecular grid.
    - `atom_charges` `(natom,)` and `atom_coords` `(natom, 3)` Bohr: nuclei.
    - `nuclear_repulsion`: scalar, Hartree.
    - `n_electrons`: `(n_alpha, n_beta)`, integer array `(2,)`.
    - `initial_density_matrix`: the initial guess, α and β, `(2, nao, nao)`.
    - `dipole_integrals`: ⟨μ|r|ν⟩ about the origin, `(3, nao, nao)`, Bohr.
    - `restricted` (static): `True` for a spin-restricted (closed-shell) calculation.
    - `grid_operators`: optional [`nlxc.AuxiliaryGridOperators`][] (default `None`), maps from
      the orthogonalised auxiliary basis of `cderi` to the grid, `(noperator, ngrid, naux)` each,
      precomputed by PySCF for nonlocal features (local exact exchange, Gaussian-convolved
      densities); built on request with `System.from_pyscf(..., grid_operators=spec)`. They add
      `8 · noperator · ngrid · naux` bytes (H2O def2-SVP, grid level 2: 19.8 MB per operator;
      C6H6: 442 MB per operator).
    - `precomputed`: geometry-only data of functionals computed ahead of the SCF on the host
      (neighbour lists, a dispersion energy), keyed by a description of what each entry is
      (e.g. `"atom_neighbours(cutoff=6.0, max_atoms=24)"`); empty by default. Filled by
      [`nlxc.models.prepare_system`][] (which [`nlxc.solve`][] calls for a concrete System);
      a model's `prepare` reads its entry here and builds it itself (a host callback inside a
      trace) only where it is missing. The entries travel with the System through `jit`,
      `vmap` and [`nlxc.batch.stack`][], so a compiled SCF holds no host callback and JAX's
      persistent compilation cache can store it. They describe this geometry and grid only:
      [`nlxc.pad_system`][] drops them, and a System whose coordinates, weights or charges are
      replaced by hand must not keep them.

    **Memory.** With 8-byte floats a System holds about
    `8·(4·block·Σ_k nblock_k·size_k + naux·nao(nao+1)/2 + 6·nao² + nao·nmo + 4·ngrid + 4·natom)`
    bytes, dominated by the screened AO values (at most the dense `4·ngrid·nao`, less the more
    spread out the molecule) and the packed DF tensor. Measured 2026-12-07 (def2-SVP,
    def2-universal-jkfit, grid level 3, blocks of 192 points, threshold 1e-10): H2O (nao=24,
    naux=113, ngrid=33 664): 26 MB; C6H6 (nao=114, naux=558, ngrid=142 776): 458 MB (AOs 425 MB,
    85 % of dense; the DF tensor 28 MB, 55 MB unpacked); the 30-atom adenine–thymine pair of S22
    (nao=321, naux=1641, ngrid=372 686): 2.56 GB (AOs 1.90 GB, 52 % of the dense 3.65 GB; the DF
    tensor 0.65 GB, 1.29 GB unpacked), 4.96 GB with dense AOs and an unpacked DF tensor.
    `benchmarks/system_memory.py` prints these numbers for any molecule (results in
    `benchmarks/results/system_memory.json`).
    """

    overlap: Float[Array, "nao nao"]
    core_hamiltonian: Float[Array, "nao nao"]
    orthogonalizer: Float[Array, "nao nmo"]
    cderi_packed: Float[Array, "naux npair"]
    ao_blocks: AbstractAOBlocks
    grid_coords: Float[Array, "ngrid 3"]
    grid_weights: Float[Array, " ngrid"]
    atom_charges: Float[Array, " natom"]
    atom_coords: Float[Array, "natom 3"]
    nuclear_repulsion: Float[Array, ""]
    n_electrons: Int[Array, "2"]
    initial_density_matrix: Float[Array, "2 nao nao"]
    dipole_integrals: Float[Array, "3 nao nao"]
    restricted: bool = eqx.field(static=True)
    grid_operators: AuxiliaryGridOperators | None = None
    precomputed: dict[str, Any] = eqx.field(default_factory=dict)

    @property
    def nao(self) -> int:
        """Number of atomic orbitals (basis functions)."""
        return self.overlap.shape[-1]

    @property
    def nmo(self) -> int:
        """Number of linearly independent molecular orbitals."""
        return self.orthogonalizer.shape[-1]

    @property
    def ngrid(self) -> int:
        """Number of grid points."""
        return self.grid_weights.shape[-1]

    @property
    def naux(self) -> int:
        """Number of (Cholesky-orthogonalised) auxiliary basis functions."""
        return self.cderi_packed.shape[-2]

    @property
    def cderi(self) -> Float[Array, "naux nao nao"]:
        """The density-fitting tensor B unpacked, `(naux, nao, nao)`, Hartree^½ (B_Qμν = B_Qνμ).

        Built from `cderi_packed` on every access: naux · nao² floats (the adenine–thymine pair in
        def2-SVP: 1.29 GB). Code that runs on large molecules contracts `cderi_packed` with
        [`nlxc.system.pack_symmetric`][] (Coulomb) or unpacks blocks of auxiliary functions
        (exchange) instead."""
        return unpack_tril(self.cderi_packed, self.nao)

    def map_grid_blocks(self, fn: Callable):
        """Evaluate `fn(ao, indices)` block by block over the grid and assemble the results.

        `fn` gets one block's AO values and gradients `ao` `(4, block, size)` (φ, ∂xφ, ∂yφ, ∂zφ
        of the block's `size` screened basis functions, Bohr^-3/2 and Bohr^-5/2) and their AO
        indices `(size,)` (padding entries point at AO 0 with zero values, so a matrix gathered
        as `M[indices][:, indices]` contributes nothing through them), and returns a pytree of
        arrays whose last axis is the block's points, `(..., block)`.

        **Returns:** that pytree with last axis `ngrid`. Each group of blocks runs in a
        `jax.lax.map` of the checkpointed `fn` (see [`AbstractAOBlocks.map`][nlxc.system.AbstractAOBlocks.map]),
        so the memory of `fn`'s work, in forward and reverse mode, is that of one block.
        """
        return self.ao_blocks.map(fn, self.ngrid)

    def ao_values(self) -> Float[Array, "4 ngrid nao"]:
        """The AO values and x, y, z derivatives on the whole grid, `(4, ngrid, nao)`, rebuilt
        from the screened blocks (screened-out values are zero). Costs O(ngrid · nao) memory: for
        tests and diagnostics; grid work should use the blocked methods."""
        return _dense_ao(self.ao_blocks, self.ngrid, self.nao)

    def orbital_values(self, coefficients: Float[Array, "*batch nao k"]) -> Float[Array, "*batch ngrid k"]:
        """ψ_k(r) = Σ_μ φ_μ(r) C_μk on the grid for coefficients `(..., nao, k)`, `(..., ngrid, k)`,
        evaluated block by block (each block contracts only its screened functions)."""
        return _orbital_values(self.ao_blocks, coefficients, self.ngrid)

    def density_values(self, matrix: Float[Array, "*batch nao nao"]) -> Float[Array, "*batch ngrid"]:
        """ρ(r) = Σ_μν φ_μ(r) M_μν φ_ν(r) on the grid for matrices `(..., nao, nao)`,
        `(..., ngrid)`, evaluated block by block."""
        return _density_values(self.ao_blocks, matrix, self.ngrid)

    @classmethod
    def from_pyscf(
        cls,
        mol,
        *,
        grid_level: int = 3,
        auxbasis=None,
        restricted: bool | None = None,
        init_guess: str = "minao",
        block_size: int = 20000,
        grids=None,
        grid_operators: GridOperatorSpec | None = None,
        grid_block_size: int = GRID_BLOCK_SIZE,
        ao_threshold: float = AO_SCREENING_THRESHOLD,
        ao_storage: str = "stored",
    ) -> System:
        """Build a System from a PySCF `gto.Mole`.

        **Arguments:**

        - `mol`: a built `pyscf.gto.Mole` (after `mol.build()`).
        - `grid_level`: PySCF's grid level, an integer 0–9, as `mf.grids.level`; ignored if
          `grids` is given.
        - `auxbasis`: auxiliary basis for density fitting: a basis name (or a dict element →
          name, as PySCF takes it). `None` picks PySCF's default (`pyscf.df.make_auxbasis`,
          i.e. def2-universal-jkfit for def2 bases), exactly what `mf.density_fit()` uses.
        - `restricted`: spin-restricted (closed-shell) or unrestricted; default: restricted iff
          `mol.spin == 0`.
        - `init_guess`: `"minao"` (PySCF's superposition of atomic densities) or `"core"`
          (diagonalise the core Hamiltonian).
        - `block_size`: number of grid points per block when evaluating AOs (bounds the
          temporary memory of PySCF's AO evaluation).
        - `grids`: an already built `pyscf.dft.gen_grid.Grids` to use instead of `grid_level`.
        - `grid_operators`: a [`nlxc.GridOperatorSpec`][] naming the auxiliary-basis grid
          operators to precompute (Coulomb/long-range potentials for local exact exchange,
          Gaussian smoothing and L²-projection for density descriptors); usually a model's
          `required_grid_operators`. `None` (default) stores none.
        - `grid_block_size`: grid points per block of the stored AO values (see
          [`AOBlocks`][nlxc.system.AOBlocks]); the unit of the blocked grid work.
        - `ao_threshold`: the AO screening threshold: a basis function is stored for (and enters
          the contractions of) a block only where max(|φ|, |∇φ| components) over the block
          exceeds it. `0.0` keeps every function that is not exactly zero.
        - `ao_storage`: `"stored"` (default) keeps the screened AO values and gradients
          ([`AOBlocks`][nlxc.system.AOBlocks]); `"recomputed"` keeps only the blocks' lists,
          points and the basis data and evaluates each block's values anew whenever it is
          visited ([`RecomputedAOBlocks`][nlxc.system.RecomputedAOBlocks]), as PySCF's numint
          does: the same results to rounding, a fraction of the memory (the AO values were
          93 % of a C6H6 def2-SVP System: 458 MB stored, 37 MB recomputed) for about 5× the time
          per grid evaluation (a PBE Fock build 0.39 s vs 2.2 s).

        **Returns:** a `System`.

        **Raises:** [`nlxc.InputError`][] (one line, before any integral is computed, except
        the orbital count) when `mol` is not a `pyscf.gto.Mole` or was not built; for a
        `grid_level` that is not an integer 0–9; for a charge/spin inconsistent with the
        electron count; when a spin channel has more electrons than the basis has linearly
        independent orbitals; for an unknown auxiliary basis (naming it, with the closest
        known name) or one without functions for an element; for an unknown `init_guess`, a
        `block_size` or `grid_block_size` that is not a positive integer, a negative or
        non-finite `ao_threshold`, an unknown `ao_storage`, `restricted=True` for an open-shell
        molecule, or a `grid_operators` that is not a `GridOperatorSpec`.
        """
        from pyscf import df, dft, gto, lib, scf

        if not isinstance(mol, gto.Mole):
            raise InputError(f"expected a built pyscf.gto.Mole, got {type(mol).__name__}")
        if mol.natm == 0 or mol.nbas == 0:
            raise InputError("the pyscf.gto.Mole has no atoms or no basis functions: call mol.build() first")
        if isinstance(grid_level, bool) or not isinstance(grid_level, (int, np.integer)) \
                or not 0 <= grid_level <= MAX_GRID_LEVEL:
            raise InputError(f"grid_level must be an integer between 0 and {MAX_GRID_LEVEL}, got {grid_level!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise InputError(f"block_size must be a positive integer, got {block_size!r}")
        if isinstance(grid_block_size, bool) or not isinstance(grid_block_size, (int, np.integer)) \
                or grid_block_size < 1:
            raise InputError(f"grid_block_size must be a positive integer, got {grid_block_size!r}")
        if isinstance(ao_threshold, bool) or not isinstance(ao_threshold, (int, float, np.floating)) \
                or not np.isfinite(ao_threshold) or ao_threshold < 0:
            raise InputError(f"ao_threshold must be a finite number >= 0, got {ao_threshold!r}")
        if ao_storage not in ("stored", "recomputed"):
            raise InputError(f"unknown ao_storage {ao_storage!r}; use 'stored' or 'recomputed'")
        if restricted is not None and not isinstance(restricted, (bool, np.bool_)):
            raise InputError(f"restricted must be True, False or None, got {restricted!r}")
        n_total = mol.nelectron
        if n_total <= 0:
            raise InputError(f"charge {mol.charge} leaves {n_total} electrons")
        if abs(mol.spin) > n_total or (n_total - mol.spin) % 2:
            raise InputError(f"spin 2S={mol.spin} is inconsistent with {n_total} electrons (charge {mol.charge})")
        if restricted is None:
            restricted = mol.spin == 0
        if restricted and mol.spin != 0:
            raise InputError(f"a restricted calculation needs a closed shell, but 2S = {mol.spin}")
        if init_guess not in ("minao", "core"):
            raise InputError(f"unknown initial guess {init_guess!r}; use 'minao' or 'core'")
        if grid_operators is not None and not isinstance(grid_operators, GridOperatorSpec):
            raise InputError(f"grid_operators must be a nlxc.GridOperatorSpec or None, got {type(grid_operators).__name__}")
        symbols = [mol.atom_pure_symbol(i) for i in range(mol.natm)]
        if isinstance(auxbasis, dict):
            for element, name in auxbasis.items():
                if isinstance(name, str):
                    check_basis(name, symbols if element == "default" else [element], kind="auxiliary basis")
        elif isinstance(auxbasis, str):
            check_basis(auxbasis, symbols, kind="auxiliary basis")

        overlap = mol.intor_symmetric("int1e_ovlp")
        s_eig, s_vec = np.linalg.eigh(overlap)
        keep = s_eig > 1e-8
        nmo = int(np.count_nonzero(keep))
        for n, channel in zip(mol.nelec, ("alpha", "beta")):
            if n > nmo:
                basis = f"basis {mol.basis}" if isinstance(mol.basis, str) else "the basis"
                independent = "" if nmo == mol.nao else " linearly independent"
                raise InputError(f"{n} {channel} electrons but only {nmo}{independent} orbitals in {basis} "
                                 f"(charge {mol.charge}, 2S={mol.spin})")
        orthogonalizer = s_vec[:, keep] / np.sqrt(s_eig[keep])
        hcore = scf.hf.get_hcore(mol)

        if auxbasis is None:
            with quiet_basis_lookup():  # make_auxbasis probes basis files and falls back to ETB
                auxbasis = df.make_auxbasis(mol)
        cderi_host = df.incore.cholesky_eri(mol, auxbasis=auxbasis, aosym="s2ij", verbose=0)
        if cderi_host.ndim == 1:  # one auxiliary function
            cderi_host = cderi_host[None]
        cderi_packed = _on_device(cderi_host)

        if grids is None:
            grids = dft.gen_grid.Grids(mol)
            grids.level = grid_level
            grids.build(with_non0tab=False)
        nonzero = grids.weights != 0  # PySCF pads grids with zero-weight points
        coords = np.ascontiguousarray(grids.coords[nonzero])
        weights = np.ascontiguousarray(grids.weights[nonzero])
        ao_blocks = _screened_ao_blocks(mol, coords, int(grid_block_size), float(ao_threshold), block_size,
                                        ao_storage)

        if init_guess == "minao":
            dm = scf.hf.init_guess_by_minao(mol)
            dm0 = np.stack([dm / 2, dm / 2])
        else:
            import scipy.linalg

            _, c = scipy.linalg.eigh(hcore, overlap)
            na, nb = mol.nelec
            dm0 = np.stack([c[:, :na] @ c[:, :na].T, c[:, :nb] @ c[:, :nb].T])

        with mol.with_common_orig((0.0, 0.0, 0.0)):
            dipole = mol.intor_symmetric("int1e_r", comp=3)

        operators = None
        if grid_operators is not None:
            operators = build_grid_operators(mol, coords, grid_operators, auxbasis=auxbasis,
                                             cderi=lib.unpack_tril(cderi_host),
                                             block_size=block_size)
        del cderi_host

        return cls(
            overlap=_on_device(overlap, np.float64),
            core_hamiltonian=_on_device(hcore, np.float64),
            orthogonalizer=_on_device(orthogonalizer, np.float64),
            cderi_packed=cderi_packed,
            ao_blocks=ao_blocks,
            grid_coords=_on_device(coords, np.float64),
            grid_weights=_on_device(weights, np.float64),
            atom_charges=_on_device(mol.atom_charges(), np.float64),
            atom_coords=_on_device(mol.atom_coords(unit="Bohr"), np.float64),
            nuclear_repulsion=_on_device(mol.energy_nuc(), np.float64),
            n_electrons=_on_device(mol.nelec, np.int64),
            initial_density_matrix=_on_device(dm0, np.float64),
            dipole_integrals=_on_device(dipole, np.float64),
            restricted=bool(restricted),
            grid_operators=operators,
        )

    @classmethod
    def from_xyz(cls, path: str | os.PathLike, basis: str, *, charge: int = 0, spin: int = 0,
                 **kwargs) -> System:
        """Build a System from a standard XYZ file (coordinates in Ångström).

        `charge` is the total charge, `spin` is 2S = N_α − N_β (PySCF's convention); other
        keyword arguments go to [`System.from_pyscf`][nlxc.System.from_pyscf].

        **Raises:** [`nlxc.InputError`][] for a missing, unreadable or ill-formed file (naming
        the file and line; see `nlxc.system.read_xyz`), an unknown element or
        basis, a charge/spin inconsistent with the electron count, atoms closer than 0.1 Å,
        and as [`System.from_pyscf`][nlxc.System.from_pyscf] raises.
        """
        return cls.from_pyscf(mole_from_xyz(path, basis, charge=charge, spin=spin), **kwargs)

    @classmethod
    def from_ase(cls, atoms, basis: str, *, charge: int = 0, spin: int = 0, **kwargs) -> System:
        """Build a System from an `ase.Atoms` (positions in Ångström).

        Arguments and errors as for [`System.from_xyz`][nlxc.System.from_xyz].
        """
        geometry = [(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.get_positions())]
        return cls.from_pyscf(build_mole(geometry, basis, charge=charge, spin=spin), **kwargs)


def build_mole(
    geometry: Sequence[tuple[str, Sequence[float]]],
    basis: str,
    *,
    charge: int = 0,
    spin: int = 0,
    unit: str = "Angstrom",
):
    """Validate a geometry and build a PySCF `Mole` from it.

    **Arguments:**

    - `geometry`: `[(element symbol, (x, y, z)), ...]`.
    - `basis`: a basis-set name PySCF knows (e.g. `"def2-svp"`).
    - `charge`: total charge. `spin`: 2S = N_α − N_β.
    - `unit`: `"Angstrom"` (default) or `"Bohr"`.

    **Returns:** a built `pyscf.gto.Mole` with `verbose=0`.

    **Raises:** [`nlxc.InputError`][] (one line, naming the problem) for: no atoms, an unknown
    element, non-finite coordinates, two atoms closer than 0.1 Å, a charge/spin inconsistent
    with the number of electrons, an unknown basis (with the closest known name) or one without
    functions for an element.
    """
    from pyscf import gto
    from pyscf.data import elements
    from pyscf.lib.exceptions import BasisNotFoundError

    if len(geometry) == 0:
        raise InputError("the geometry has no atoms")
    symbols, coords = [], []
    for symbol, xyz in geometry:
        label = str(symbol).strip()
        normal = label[:1].upper() + label[1:].lower()
        if normal not in elements.ELEMENTS[1:]:
            raise InputError(f"unknown element {label!r}")
        xyz = np.asarray(xyz, dtype=float)
        if xyz.shape != (3,) or not np.all(np.isfinite(xyz)):
            raise InputError(f"atom {label} has invalid coordinates {xyz.tolist()}")
        symbols.append(normal)
        coords.append(xyz)
    coords = np.array(coords)
    to_angstrom = 1.0 if unit.lower().startswith("a") else 1.0 / ANGSTROM_TO_BOHR
    if len(coords) > 1:
        d = np.linalg.norm(coords[:, None] - coords[None], axis=-1) * to_angstrom
        d[np.diag_indices(len(coords))] = np.inf
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] < MIN_ATOM_DISTANCE_ANGSTROM:
            raise InputError(
                f"atoms {i + 1} ({symbols[i]}) and {j + 1} ({symbols[j]}) are {d[i, j]:.3g} Å apart "
                f"(closer than {MIN_ATOM_DISTANCE_ANGSTROM} Å)"
            )
    n_electrons = sum(elements.charge(s) for s in symbols) - int(charge)
    if n_electrons <= 0:
        raise InputError(f"charge {charge} leaves {n_electrons} electrons")
    if spin < 0 or spin > n_electrons or (n_electrons - spin) % 2:
        raise InputError(
            f"spin 2S={spin} is inconsistent with {n_electrons} electrons (charge {charge})"
        )
    check_basis(basis, symbols)
    try:
        with quiet_basis_lookup():
            mol = gto.M(
                atom=[(s, tuple(c)) for s, c in zip(symbols, coords)],
                basis=basis,
                charge=int(charge),
                spin=int(spin),
                unit=unit,
                verbose=0,
            )
    except BasisNotFoundError as err:  # basis text (not a name) that PySCF cannot parse
        detail = " ".join(str(err).split())
        raise InputError(f"unknown basis {basis!r} for {'/'.join(sorted(set(symbols)))}: {detail}") from None
    if mol.nao == 0:
        raise InputError(f"basis {basis!r} has no functions for these elements")
    return mol


def read_xyz(path: str | os.PathLike) -> list[tuple[str, tuple[float, float, float]]]:
    """Read a standard (single-frame) XYZ file.

    The format: line 1 the number of atoms N, line 2 a comment, then N lines
    `symbol x y z` (Ångström; further columns are ignored; the symbol is matched
    case-insensitively, an atomic number is also accepted). Blank lines at the end are ignored;
    any other line after the N atoms is an error (a multi-frame file is refused).

    **Returns:** `[(element symbol, (x, y, z)), ...]` in Ångström, as
    [`build_mole`][nlxc.system.build_mole] takes it.

    **Raises:** [`nlxc.InputError`][] (one line, naming the file and, for a malformed file, the
    line) for a missing file, a directory, an unreadable or non-text file, an empty file, a
    first line that is not a positive atom count, fewer atom lines than that count, a line
    that is not `symbol x y z` with numeric, finite coordinates, an unknown element, or extra
    lines after the atoms.
    """
    from pyscf.data import elements

    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory, not an XYZ file")
    if not os.path.exists(path):
        raise InputError(f"cannot read {path}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a valid XYZ file: it is not UTF-8 text") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    bad = f"{path} is not a valid XYZ file"
    if not lines:
        raise InputError(f"{bad}: the file is empty")
    try:
        n_atoms = int(lines[0].strip())
    except ValueError:
        raise InputError(f"{bad}: line 1 should be the number of atoms, got {lines[0].strip()!r}") from None
    if n_atoms < 1:
        raise InputError(f"{bad}: line 1 should be a positive number of atoms, got {n_atoms}")
    found = max(len(lines) - 2, 0)
    if found < n_atoms:
        raise InputError(f"{bad}: line 1 says {n_atoms} atoms but only {found} atom line"
                         f"{'' if found == 1 else 's'} follow")
    geometry = []
    for number, line in enumerate(lines[2 : 2 + n_atoms], start=3):
        tokens = line.split()
        if len(tokens) < 4:
            raise InputError(f"{bad}: line {number} should be 'symbol x y z', got {line.strip()!r}")
        label = tokens[0]
        if label.isdigit():
            z = int(label)
            symbol = elements.ELEMENTS[z] if 1 <= z < len(elements.ELEMENTS) else label
        else:
            symbol = label[:1].upper() + label[1:].lower()
        if symbol not in elements.ELEMENTS[1:]:
            raise InputError(f"{bad}: line {number}: unknown element {label!r}")
        try:
            xyz = tuple(float(t) for t in tokens[1:4])
        except ValueError:
            raise InputError(f"{bad}: line {number} has a non-numeric coordinate: {line.strip()!r}") from None
        if not all(np.isfinite(xyz)):
            raise InputError(f"{bad}: line {number} has a non-finite coordinate: {line.strip()!r}")
        geometry.append((symbol, xyz))
    for number, line in enumerate(lines[2 + n_atoms :], start=3 + n_atoms):
        if line.strip():
            raise InputError(f"{bad}: line {number} follows the {n_atoms} atom{'' if n_atoms == 1 else 's'} "
                             "of line 1 (a wrong atom count, or several frames?)")
    return geometry


def mole_from_xyz(path: str | os.PathLike, basis: str, *, charge: int = 0, spin: int = 0):
    """Read a standard XYZ file (Ångström) and build a validated PySCF `Mole`.

    The file (read by `nlxc.system.read_xyz`): line 1 the number of atoms N, line 2 a comment,
    then N lines `symbol x y z` in Ångström (further columns ignored); one frame only.

    **Raises:** [`nlxc.InputError`][] (one line) as [`build_mole`][nlxc.system.build_mole]
    does, and, naming the file (and the line), for a missing file, a directory, an unreadable
    or non-text file, an empty file, a first line that is not a positive atom count, fewer atom
    lines than that count, an atom line that is not `symbol x y z` with finite numbers, an
    unknown element, or lines after the N atoms.
    """
    return build_mole(read_xyz(path), basis, charge=charge, spin=spin)


def pad_system(
    system: System,
    *,
    nao: int | None = None,
    naux: int | None = None,
    ngrid: int | None = None,
    natom: int | None = None,
    blocks: BlockLayout | None = None,
    host: bool = False,
) -> System:
    """Pad a System to larger shapes without changing its SCF.

    Systems of equal shapes can be stacked (`jax.tree.map(jnp.stack, ...)`) and solved under one
    compilation with `jax.vmap`. Padding keeps the physics unchanged:

    - padded basis functions have zero rows in the orthogonaliser, so they never enter an
      orbital; the padded orbitals are pushed up by `PADDED_ORBITAL_ENERGY` (Hartree) so they are
      never occupied (their overlap block is the identity, their integrals zero);
    - padded auxiliary functions have a zero DF tensor;
    - padded grid points have weight zero and zero AO values (so zero density): they fall in
      grid blocks that no AO block covers;
    - the screened AO blocks move to the AO-list sizes of `blocks` (their lists padded with
      entries that point at AO 0 with zero values) and each group is filled with zero blocks
      that are never assembled onto the grid; recomputed AO blocks also pad their basis data
      (zero functions up to `nao`, primitives and monomials to `blocks.basis`);
    - padded atoms have zero charge;
    - the grid operators (if any) are zero on padded grid points and auxiliary functions;
    - the functionals' precomputed data (`System.precomputed`) is dropped: it belongs to the
      unpadded shapes ([`nlxc.models.prepare_system`][] rebuilds it for the padded System).

    **Arguments:** the target sizes (each at least the current one; `None` keeps it).
    `nmo` grows by as much as `nao`. `blocks`: the target
    [`BlockLayout`][nlxc.system.BlockLayout] of the AO blocks (one that covers the System's,
    e.g. `BlockLayout.covering([s.ao_blocks.layout for s in systems], nao)`); `None` keeps
    the System's own. With `host=True` the padded arrays are left as NumPy
    arrays in host memory (for stacking many Systems before one transfer to the device).

    **Returns:** the padded `System`.

    **Raises:** `ValueError` if a target is smaller than the current size, or `blocks` does not
    hold the System's AO blocks.
    """
    cur = {"nao": system.nao, "naux": system.naux, "ngrid": system.ngrid, "natom": system.atom_charges.shape[0]}
    new = {k: cur[k] if v is None else int(v) for k, v in
           {"nao": nao, "naux": naux, "ngrid": ngrid, "natom": natom}.items()}
    for k in cur:
        if new[k] < cur[k]:
            raise ValueError(f"cannot pad {k} from {cur[k]} down to {new[k]}")
    dao, daux, dgrid, datom = (new[k] - cur[k] for k in ("nao", "naux", "ngrid", "natom"))
    nmo = system.nmo + dao
    # Concrete arrays are padded with NumPy on the host (one device transfer per array instead
    # of many small dispatched ops); traced ones (inside jit) with jax.numpy.
    xp = jnp if isinstance(system.overlap, jax.core.Tracer) else np

    def pad(x, widths):
        return xp.pad(xp.asarray(x), widths)

    overlap = pad(system.overlap, ((0, dao), (0, dao)))
    eye = xp.eye(dao, dtype=overlap.dtype)
    if xp is np:
        overlap[system.nao :, system.nao :] = eye
    else:
        overlap = overlap.at[system.nao :, system.nao :].set(eye)
    fields = dict(
        overlap=overlap,
        core_hamiltonian=pad(system.core_hamiltonian, ((0, dao), (0, dao))),
        orthogonalizer=pad(system.orthogonalizer, ((0, dao), (0, nmo - system.nmo))),
        # the packed lower triangle of a larger matrix starts with that of the smaller one
        cderi_packed=pad(system.cderi_packed, ((0, daux), (0, packed_size(new["nao"]) - packed_size(system.nao)))),
        grid_coords=pad(system.grid_coords, ((0, dgrid), (0, 0))),
        grid_weights=pad(system.grid_weights, ((0, dgrid),)),
        atom_charges=pad(system.atom_charges, ((0, datom),)),
        atom_coords=pad(system.atom_coords, ((0, datom), (0, 0))),
        nuclear_repulsion=xp.asarray(system.nuclear_repulsion),
        n_electrons=xp.asarray(system.n_electrons),
        initial_density_matrix=pad(system.initial_density_matrix, ((0, 0), (0, dao), (0, dao))),
        dipole_integrals=pad(system.dipole_integrals, ((0, 0), (0, dao), (0, dao))),
    )
    operators = None
    if system.grid_operators is not None:
        operators = system.grid_operators.pad(ngrid=new["ngrid"], naux=new["naux"], xp=xp)
    ao_blocks = system.ao_blocks.pad_functions(new["nao"], xp=xp)
    if blocks is not None and blocks != ao_blocks.layout:
        ao_blocks = ao_blocks.relayout(blocks, xp=xp)
    elif xp is np and host:
        ao_blocks = jax.tree.map(np.asarray, ao_blocks)
    if xp is np and not host:
        fields = {k: _on_device(v) for k, v in fields.items()}
        ao_blocks = jax.tree.map(_on_device, ao_blocks)
        if operators is not None:
            operators = jax.tree.map(_on_device, operators)
    return System(**fields, ao_blocks=ao_blocks, restricted=system.restricted, grid_operators=operators)


def pad_to_common_shape(systems: Sequence[System]) -> list[System]:
    """Pad Systems to the largest `nao`, `naux`, `ngrid` and atom count among them, and their AO
    blocks to one covering [`BlockLayout`][nlxc.system.BlockLayout]."""
    sizes = {
        "nao": max(s.nao for s in systems),
        "naux": max(s.naux for s in systems),
        "ngrid": max(s.ngrid for s in systems),
        "natom": max(s.atom_charges.shape[0] for s in systems),
    }
    layout = BlockLayout.covering([s.ao_blocks.layout for s in systems], sizes["nao"])
    return [pad_system(s, **sizes, blocks=layout) for s in systems]
