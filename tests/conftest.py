"""Shared, session-scoped fixtures: molecules and their Systems are built once per test run."""

import functools

import pytest

import nlxc  # noqa: F401  (enables float64 before anything else touches JAX)

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


@pytest.fixture(scope="session")
def get_mole():
    return mole


@pytest.fixture(scope="session")
def get_system():
    return system
