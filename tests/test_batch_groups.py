"""One group of AO blocks per bucket (`make_batches(max_block_groups=...)`, `merge_block_groups`).

Merging the screened AO blocks of a bucket into fewer list sizes (padding the AO lists) changes
only how the grid work is laid out, not what it computes: the density, the XC energy and its
gradient (the XC part of the Fock matrix) of each molecule in a batch with one group equal those
of the batch with the covering layout, to 1e-12. The merged layout is the cheapest one (fewest
stored AO values) with at most the requested number of groups: checked against every choice.
"""

import itertools

import jax
import numpy as np
import pytest
from conftest import system

import nlxc
from nlxc.batch import make_batches, merge_block_groups
from nlxc.grid import Density
from nlxc.system import BlockLayout

pytestmark = pytest.mark.xdist_group("batch")

NAMES = ("n2", "ch2", "h2o")


def _storage(layout):
    return sum(size * n for size, n in layout.groups)


def _brute_force(layout, k):
    """Smallest storage over every choice of ≤ k kept list sizes (the largest always kept)."""
    sizes = [s for s, _ in layout.groups]
    best = None
    for r in range(1, k + 1):
        for kept in itertools.combinations(sizes[:-1], r - 1):
            kept = sorted(kept) + [sizes[-1]]
            cost = sum(n * next(t for t in kept if t >= s) for s, n in layout.groups)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("groups", [((4, 13), (12, 40), (15, 66)), ((12, 41), (16, 66), (22, 80)),
                                    ((4, 300), (8, 2), (12, 5), (16, 1), (24, 90))])
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_merged_layout_is_the_cheapest_covering_one(groups, k):
    layout = BlockLayout(192, groups)
    merged = merge_block_groups(layout, k)
    assert len(merged.groups) <= k
    assert merged.block_size == layout.block_size
    assert max(s for s, _ in merged.groups) == max(s for s, _ in groups)
    assert sum(n for _, n in merged.groups) == sum(n for _, n in groups)
    # covering: every original group fits a merged size with room for all blocks up to it
    for size, _ in groups:
        assert any(t >= size for t, _ in merged.groups)
    assert _storage(merged) == _brute_force(layout, k)
    if k >= len(groups):
        assert merged == layout


def test_merge_rejects_zero_groups():
    with pytest.raises(ValueError, match="max_group"):
        merge_block_groups(BlockLayout(192, ((4, 1),)), 0)
    with pytest.raises(ValueError, match="max_block_groups"):
        make_batches([system("h2o")], max_block_groups=0)


def _xc(functional, s, dm):
    return functional(Density.from_density_matrix(dm, s), dm, s)


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_one_group_gives_the_same_density_energy_and_potential():
    systems = [system(n) for n in NAMES]
    (screened,) = make_batches(systems, max_buckets=1, split_shells=False)
    (dense,) = make_batches(systems, max_buckets=1, split_shells=False, max_block_groups=1)
    assert len(screened.system.ao_blocks.layout.groups) > 1
    assert len(dense.system.ao_blocks.layout.groups) == 1
    np.testing.assert_array_equal(np.asarray(screened.index), np.asarray(dense.index))
    functional = nlxc.get_functional("pbe")
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(lambda dm, s: _xc(functional, s, dm)), in_axes=(0, 0)))
    density = jax.jit(jax.vmap(nlxc.density_on_grid))
    results = []
    for b in (screened, dense):
        dm = b.system.initial_density_matrix
        results.append((density(dm, b.system), *value_and_grad(dm, b.system)))
    for a, c in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=0, atol=1e-12)
    assert np.all(np.abs(np.asarray(results[0][1])) > 1.0)  # real XC energies, not zeros


def test_config_keys_reach_make_batches(tmp_path):
    from nlxc.train import ConfigError, load_config

    path = tmp_path / "c.toml"
    path.write_text('[data]\nsplit_shells = false\nmax_block_groups = 1\n')
    data = load_config(str(path)).data
    assert data.split_shells is False and data.max_block_groups == 1
    assert load_config(str(path)).to_dict()["data"]["max_block_groups"] == 1
    path.write_text('[data]\nmax_block_groups = 0\n')
    with pytest.raises(ConfigError, match="max_block_groups"):
        load_config(str(path))
