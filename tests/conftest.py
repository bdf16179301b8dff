"""Shared, session-scoped fixtures: molecules and their Systems are built once per test run."""

import functools
import os
import sys

import pytest

# --- Before JAX is imported: a persistent compilation cache and one thread per worker ----------
# The suite is dominated by XLA compilation. A per-user cache directory keyed by the Python, JAX
# and jaxlib versions lets a second run (and the subprocesses of the CLI tests, which inherit
# the environment) load compiled programs instead of compiling them again. JAX also keys each
# entry by the program, its compile options and the backend, so a stale entry is never used.
# Set NLXC_TEST_NO_CACHE=1 for a cold run that neither reads nor writes the cache.
def _jax_cache_dir() -> str:
    from importlib.metadata import version

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-jax{version('jax')}-jaxlib{version('jaxlib')}"
    return os.path.join(base, "nlxc", "jax-compilation-cache", tag)


if not os.environ.get("NLXC_TEST_NO_CACHE"):
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _jax_cache_dir())
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# pytest-xdist runs one worker per core: each worker (and its subprocesses) computes on one
# thread, so that two workers do not oversubscribe two cores (XLA's Eigen pool, OpenMP in PySCF,
# OpenBLAS). A run with `-n 0` keeps the defaults.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    _flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in _flags:
        os.environ["XLA_FLAGS"] = (_flags + " --xla_cpu_multi_thread_eigen=false"
                                   " intra_op_parallelism_threads=1").strip()

import nlxc  # noqa: E402,F401  (enables float64 before anything else touches JAX)

# Geometries in Ångström (experimental or near-equilibrium), (atoms, charge, 2S).
MOLECULES = {
    "h2o": ("O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692", 0, 0),
    "nh3": ("N 0 0 0.1162; H 0 0.9397 -0.2711; H 0.8138 -0.4699 -0.2711; H -0.8138 -0.4699 -0.2711", 0, 0),
    "ch4": ("C 0 0 0; H 0.6276 0.6276 0.6276; H -0.6276 -0.6276 0.6276; H -0.6276 0.6276 -0.6276;"
            " H 0.6276 -0.6276 -0.6276", 0, 0),
    "n2": ("N 0 0 0; N 0 0 1.0977", 0, 0),
    "c6h6": ("C 0 1.396792 0; C 1.209657 0.698396 0; C 1.209657 -0.698396 0; C 0 -1.396792 0;"
             " C -1.209657 -0.698396 0; C -1.209657 0.698396 0; H 0 2.484212 0; H 2.151390 1.242106 0;"
             " H 2.151390 -1.242106 0; H 0 -2.484212 0; H -2.151390 -1.242106 0; H -2.151390 1.242106 0",
             0, 0),
    "o2": ("O 0 0 0; O 0 0 1.2075", 0, 2),
    "ch2": ("C 0 0 0.1027; H 0 0.9955 -0.3080; H 0 -0.9955 -0.3080", 0, 2),
    "no": ("N 0 0 0; O 0 0 1.1508", 0, 1),
}

# Grid level used for all SCF comparisons with PySCF (the same level on both sides).
GRID_LEVEL = 1
BASIS = "def2-svp"


@functools.lru_cache(maxsize=None)
def mole(name, basis=BASIS):
    from pyscf import gto

    atom, charge, spin = MOLECULES[name]
    return gto.M(atom=atom, basis=basis, charge=charge, spin=spin, verbose=0)


@functools.lru_cache(maxsize=None)
def system(name, grid_level=GRID_LEVEL):
    return nlxc.System.from_pyscf(mole(name), grid_level=grid_level)


# H2 stretched to 2.0 Å, solved spin-unrestricted: its spin-symmetric (α = β) state is a saddle
# point of the UKS energy, the broken-symmetry state the minimum (the stability-analysis tests)
STRETCHED_H2 = "H 0 0 0; H 0 0 2.0"


@functools.lru_cache(maxsize=None)
def stretched_h2():
    """(Mole, unrestricted System) of `STRETCHED_H2` in def2-SVP at grid level 1."""
    from pyscf import gto

    mol = gto.M(atom=STRETCHED_H2, basis=BASIS, verbose=0)
    return mol, nlxc.System.from_pyscf(mol, grid_level=1, restricted=False)


@pytest.fixture(scope="session")
def get_mole():
    return mole


@pytest.fixture(scope="session")
def get_system():
    return system


# water (Å), as an XYZ file: the geometry of the CLI and input-error tests
WATER = "3\nwater\nO 0 0 0.1173\nH 0 0.7572 -0.4692\nH 0 -0.7572 -0.4692\n"


@pytest.fixture
def water(tmp_path):
    """The path of an XYZ file holding `WATER`."""
    path = tmp_path / "water.xyz"
    path.write_text(WATER)
    return str(path)


def _memory_maps() -> int:
    try:
        with open("/proc/self/maps") as fh:
            return sum(1 for _ in fh)
    except OSError:  # not Linux
        return 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """Keep a test process below the kernel's memory-map limit.

    Every XLA CPU executable holds ~1,300 memory maps, and JAX's jit caches keep them all: a
    worker that runs a few hundred tests reaches `vm.max_map_count` (65,530) and aborts inside
    LLVM while compiling ("Fatal Python error: Aborted", the worker lost; seen on 2 cores).
    Past 40,000 maps the in-memory caches are cleared after the test; later tests then load
    their programs from the persistent compilation cache instead of keeping them resident."""
    yield
    if _memory_maps() > 40_000:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()
