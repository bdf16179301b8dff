"""Batches of molecules: padding to common shapes, size buckets, stacking, device sharding.

A batch of molecules is one [`nlxc.System`][] whose arrays carry a leading batch axis, so
`jax.vmap(solve, in_axes=(None, 0))` (or [`nlxc.batch.solve_batch`][]) runs the SCF of every
molecule under a single compilation. Molecules of different sizes are padded
([`nlxc.pad_system`][]) to the shape of their *bucket*; [`nlxc.batch.make_batches`][] chooses a
few buckets so that a whole dataset compiles a handful of programs, not one per molecule.

Data parallelism over several devices is a sharding of the batch axis
([`nlxc.batch.shard`][]): `jax.jit` partitions the vmapped SCF, and its gradients, over a
`jax.sharding.Mesh` with no change to the code that solves one molecule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int

from .models import prepare_system
from .scf import solve
from .system import BlockLayout, System, pad_system

__all__ = [
    "Batch",
    "BucketShape",
    "as_unrestricted",
    "choose_buckets",
    "merge_block_groups",
    "make_batches",
    "shard",
    "solve_batch",
    "stack",
    "unstack",
]

_SIZES = ("nao", "naux", "ngrid", "natom")


def _sizes(system: System) -> tuple[int, int, int, int]:
    return (system.nao, system.naux, system.ngrid, system.atom_charges.shape[0])


@dataclasses.dataclass(frozen=True)
class BucketShape:
    """The padded shape shared by every System in a bucket."""

    nao: int
    naux: int
    ngrid: int
    natom: int

    @classmethod
    def covering(cls, systems: Sequence[System], multiple: int = 1) -> BucketShape:
        """The smallest shape that holds all `systems`, each size rounded up to `multiple`."""
        sizes = np.max([_sizes(s) for s in systems], axis=0)
        sizes = -(-sizes // multiple) * multiple
        return cls(*(int(n) for n in sizes))

    def cost(self) -> float:
        """Relative cost of one SCF iteration at this shape (FLOP model, arbitrary units).

        Grid work (density, potential) scales as ngrid·nao; Coulomb/exchange through the
        density-fitting tensor as naux·nao²; diagonalisation as nao³.
        """
        return float(self.ngrid * self.nao * 10 + self.naux * self.nao**2 + self.nao**3)


def as_unrestricted(system: System) -> System:
    """The same System marked spin-unrestricted (`restricted=False`).

    A closed-shell molecule solved unrestricted from its (α = β) initial guess converges to the
    same density and energy; this lets closed- and open-shell molecules share one batch (the
    `restricted` flag is static, so it must agree within a batch).
    """
    if not system.restricted:
        return system
    return dataclasses.replace(system, restricted=False)


def stack(systems: Sequence[System]) -> System:
    """Stack Systems of identical shapes into one System with a leading batch axis.

    If the Systems mix restricted and unrestricted ones, all are made unrestricted
    ([`as_unrestricted`][nlxc.batch.as_unrestricted]).

    **Raises:** `ValueError` for an empty list, unequal shapes (pad them first with
    [`nlxc.pad_system`][] or use [`make_batches`][nlxc.batch.make_batches]), or Systems whose
    grid operators ([`nlxc.AuxiliaryGridOperators`][]) differ in kind.
    """
    systems = list(systems)
    if not systems:
        raise ValueError("cannot stack an empty list of Systems")
    shapes = {_sizes(s) for s in systems}
    if len(shapes) > 1:
        raise ValueError(
            f"Systems have different (nao, naux, ngrid, natom) {sorted(shapes)}; pad them to one shape first"
        )
    operators = {None if s.grid_operators is None else s.grid_operators.spec for s in systems}
    if len(operators) > 1:
        raise ValueError(f"Systems carry different grid operators {sorted(map(str, operators))}; "
                         "build them all with the same grid_operators spec")
    if len({s.restricted for s in systems}) > 1:
        systems = [as_unrestricted(s) for s in systems]
    if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(systems[0])):
        # one transfer per array, compiling nothing (jnp.asarray would compile a program per shape)
        return jax.tree.map(lambda *xs: jax.device_put(np.stack(xs)), *systems)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *systems)


def unstack(batched: System) -> list[System]:
    """Split a stacked System (leading batch axis) into a list of Systems."""
    n = jax.tree.leaves(batched)[0].shape[0]
    return [jax.tree.map(lambda x: x[i], batched) for i in range(n)]


def choose_buckets(
    systems: Sequence[System], max_buckets: int = 4, *, multiple: int = 1
) -> list[list[int]]:
    """Group Systems into at most `max_buckets` buckets of similar size.

    The Systems are sorted by the cost of their own shape ([`BucketShape.cost`][nlxc.batch.BucketShape.cost])
    and cut into contiguous groups by dynamic programming so that the total padded cost
    Σ_bucket (number of Systems × cost of the bucket's covering shape) is smallest.
    Fewer buckets mean fewer compilations; more buckets mean less padding.

    **Returns:** lists of indices into `systems`, one per bucket, smallest shapes first.
    """
    n = len(systems)
    if n == 0:
        return []
    if max_buckets < 1:
        raise ValueError(f"max_buckets must be at least 1, got {max_buckets}")
    order = sorted(range(n), key=lambda i: (BucketShape.covering([systems[i]], multiple).cost(), i))
    sizes = np.array([_sizes(systems[i]) for i in order])
    # cover[i][j]: padded cost of the group order[i:j+1]
    k_max = min(max_buckets, n)
    inf = float("inf")
    best = np.full((k_max + 1, n + 1), inf)
    cut = np.zeros((k_max + 1, n + 1), dtype=int)
    best[0, 0] = 0.0

    def group_cost(i, j):  # systems order[i:j]
        m = sizes[i:j].max(axis=0)
        m = -(-m // multiple) * multiple
        return (j - i) * BucketShape(*(int(x) for x in m)).cost()

    costs = {(i, j): group_cost(i, j) for i in range(n) for j in range(i + 1, n + 1)}
    for k in range(1, k_max + 1):
        for j in range(1, n + 1):
            for i in range(k - 1, j):
                c = best[k - 1, i] + costs[(i, j)]
                if c < best[k, j]:
                    best[k, j], cut[k, j] = c, i
    k = int(np.argmin(best[1:, n])) + 1
    groups, j = [], n
    while k > 0:
        i = cut[k, j]
        groups.append([order[t] for t in range(i, j)])
        j, k = i, k - 1
    return groups[::-1]


def merge_block_groups(layout: BlockLayout, max_groups: int) -> BlockLayout:
    """`layout` with at most `max_groups` groups of AO blocks: the blocks of the smaller list
    sizes move into larger ones (their AO lists padded), chosen so that the stored AO values,
    Σ_group (blocks × list size), are smallest; the largest list size is always kept.

    Every group of screened blocks is a separate code path of each grid evaluation in a compiled
    program (the density, the XC potential and their derivatives, in every SCF iteration and
    adjoint solve), so a bucket of small molecules compiles faster with one group (all its
    blocks at the largest list size) than with several; large molecules, whose blocks screen
    away most of the basis, store and compute less with several. The result covers `layout`
    ([`nlxc.pad_system`][] and `AOBlocks.relayout` accept it).

    **Raises:** `ValueError` if `max_groups < 1`.
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    groups = sorted(layout.groups)
    m = len(groups)
    if m <= max_groups:
        return layout
    sizes = [s for s, _ in groups]
    below = np.concatenate([[0], np.cumsum([n for _, n in groups])])
    # best[k][j]: smallest storage of groups[:j+1] in k merged groups, the last of list size sizes[j]
    inf = float("inf")
    best = np.full((max_groups + 1, m), inf)
    back = np.zeros((max_groups + 1, m), dtype=int)
    best[1] = below[1:] * np.asarray(sizes)
    for k in range(2, max_groups + 1):
        for j in range(m):
            for i in range(j):  # the previous merged group ends at groups[i]
                c = best[k - 1, i] + (below[j + 1] - below[i + 1]) * sizes[j]
                if c < best[k, j]:
                    best[k, j], back[k, j] = c, i
    k = int(np.argmin(best[1:, m - 1])) + 1
    merged, j = [], m - 1
    while k >= 1:
        i = back[k, j] if k > 1 else -1
        merged.append((sizes[j], int(below[j + 1] - below[i + 1])))
        j, k = i, k - 1
    # keeps the layout's other static sizes (the basis data of recomputed AO blocks)
    return dataclasses.replace(layout, groups=tuple(sorted(merged)))


class Batch(eqx.Module):
    """Molecules padded to one shape and stacked, ready for `jax.vmap`.

    - `system`: a [`nlxc.System`][] whose arrays have a leading batch axis `(batch, ...)`.
    - `index`: position of each entry in the list given to [`make_batches`][nlxc.batch.make_batches],
      `(batch,)`; `-1` for filler entries.
    - `mask`: `True` for real molecules, `False` for filler entries (copies of a real one,
      added so every batch of a bucket has the same size); losses must weight by it.
    """

    system: System
    index: Int[Array, " batch"]
    mask: Bool[Array, " batch"]

    def __len__(self) -> int:
        return int(self.index.shape[0])


def make_batches(
    systems: Sequence[System],
    *,
    max_buckets: int = 4,
    batch_size: int | None = None,
    multiple: int = 1,
    split_shells: bool = True,
    max_block_groups: int | None = None,
) -> list[Batch]:
    """Pad, bucket and stack Systems into batches for `jax.vmap`.

    **Arguments:**

    - `systems`: Systems of any sizes, restricted or unrestricted (a batch that mixes them is
      solved unrestricted).
    - `max_buckets`: at most this many distinct padded shapes, hence compilations of the
      vmapped SCF (see [`choose_buckets`][nlxc.batch.choose_buckets]).
    - `batch_size`: split each bucket into batches of exactly this many entries (the last one
      is filled with masked copies); `None` puts each bucket into one batch.
    - `multiple`: round each padded size up to a multiple of this (shapes then repeat across
      datasets, so compiled programs are reused).
    - `split_shells`: bucket restricted (closed-shell) and unrestricted Systems separately
      (`max_buckets` each), so closed shells keep the cheaper restricted SCF; with `False`
      they share buckets and a mixed bucket is solved unrestricted.
    - `max_block_groups`: at most this many groups of screened AO blocks (AO-list sizes) per
      bucket ([`merge_block_groups`][nlxc.batch.merge_block_groups]); `None` keeps every list
      size of the bucket's covering layout. With `split_shells=False, max_buckets=1,
      max_block_groups=1` a whole dataset of small molecules compiles one SCF program, with a
      single code path per grid evaluation.

    **Returns:** a list of [`Batch`][nlxc.batch.Batch]es; every molecule appears in exactly one,
    with `mask=True`.

    **Raises:** `ValueError` for an empty list, `batch_size < 1` or `max_block_groups < 1`.
    """
    systems = list(systems)
    if not systems:
        raise ValueError("no Systems to batch")
    if max_block_groups is not None and max_block_groups < 1:
        raise ValueError(f"max_block_groups must be at least 1, got {max_block_groups}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if split_shells:
        families = [[i for i, s in enumerate(systems) if s.restricted == r] for r in (True, False)]
    else:
        families = [list(range(len(systems)))]
    groups = []
    for family in families:
        if family:
            buckets = choose_buckets([systems[i] for i in family], max_buckets, multiple=multiple)
            groups += [[family[j] for j in bucket] for bucket in buckets]
    batches = []
    for group in groups:
        mixed = len({systems[i].restricted for i in group}) > 1
        shape = BucketShape.covering([systems[i] for i in group], multiple)
        layout = BlockLayout.covering([systems[i].ao_blocks.layout for i in group], shape.nao)
        if max_block_groups is not None:
            layout = merge_block_groups(layout, max_block_groups)
        size = len(group) if batch_size is None else batch_size
        for start in range(0, len(group), size):
            chunk = group[start : start + size]
            fill = size - len(chunk)
            padded = []
            for i in chunk + [chunk[-1]] * fill:
                s = systems[i]
                s = as_unrestricted(s) if mixed else s
                padded.append(pad_system(s, **dataclasses.asdict(shape), blocks=layout, host=True))
            batches.append(
                Batch(
                    system=stack(padded),
                    index=jax.device_put(np.asarray(chunk + [-1] * fill, dtype=np.int32)),
                    mask=jax.device_put(np.asarray([True] * len(chunk) + [False] * fill)),
                )
            )
    return batches


def solve_batch(functional, system: System, **kwargs):
    """`jax.vmap` of [`nlxc.solve`][] over the leading axis of a stacked `system`.

    The functional is shared by every molecule; `kwargs` go to `solve` (they must not be
    batched). Equivalent to `jax.vmap(lambda s: solve(functional, s, **kwargs))(system)`,
    after [`nlxc.models.prepare_system`][] has computed the functional's geometry-only data
    (neighbour lists) for each molecule on the host when `system` is concrete, so that the
    compiled SCF holds no host callback. Call `prepare_system` yourself before a `jax.jit` of
    your own around `solve_batch`.

    **Returns:** an [`nlxc.SCFResult`][] whose arrays have a leading batch axis.
    """
    system = prepare_system(functional, system)
    return eqx.filter_vmap(lambda s: solve(functional, s, **kwargs))(system)


def shard(tree, mesh: jax.sharding.Mesh, axis: str | None = None):
    """Place every array of `tree` on `mesh`, split along its leading (batch) axis.

    The leading axis of each array is split over the mesh axis `axis` (default: the mesh's
    first axis); its other axes are replicated. A jitted function of the result (e.g.
    [`solve_batch`][nlxc.batch.solve_batch] or the gradient of a loss over the batch) then
    runs data-parallel, one slice of the batch per device, and gives the same numbers as on
    one device. Arrays without a batch axis (model parameters) should be replicated instead:
    `jax.device_put(params, NamedSharding(mesh, PartitionSpec()))`.

    **Raises:** `ValueError` if a leading axis is not divisible by the number of devices
    along `axis` (fill the batch to a multiple, e.g. with `make_batches(batch_size=...)`).
    """
    from jax.sharding import NamedSharding, PartitionSpec

    axis = mesh.axis_names[0] if axis is None else axis
    n = mesh.shape[axis]

    def put(x):
        if not eqx.is_array(x):
            return x
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(
                f"cannot split an array of shape {x.shape} over {n} devices along its first axis"
            )
        spec = PartitionSpec(axis, *([None] * (x.ndim - 1)))
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree.map(put, tree)
