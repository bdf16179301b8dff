"""The data of a run: splits of the dataset's molecules, Systems, batches, targets and weights."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import losses as L
from .._config import (
    ConfigError,
    DataConfig,
    TrainConfig,
)
from .._errors import InputError
from ..batch import Batch, make_batches
from ..data import ReferenceDataset, default_dataset, g2
from ..models import get_functional, prepare_system
from ..response import ExcitationTargets, occupied_virtual_slots
from ..system import System
from ..xc import (
    AbstractFunctional,
    AbstractSemilocalFunctional,
    required_grid_operators,
)
from ._common import SPLITS

# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


class _StepData(eqx.Module):
    """Everything a step reads, as jit arguments (arrays only)."""

    batches: list[Batch]
    targets: list[L.Targets]
    molecule_weights: list[jax.Array]  # per batch: (3, batch) weights of each split
    reactions: L.Reactions | None
    reaction_weights: jax.Array | None  # (3, n_reactions)
    excitations: list[ExcitationTargets] | None = None  # per batch, for the excitation term


@dataclasses.dataclass
class _Prepared:
    names: list[str]
    split_of: dict[str, str]
    dataset: Any
    systems: list[System]
    data: _StepData
    reaction_names: list[str]
    reaction_species: list[dict[str, float]]
    reaction_reference: np.ndarray
    target_energy: dict[str, float]


def _open_dataset(data: DataConfig):
    if data.dataset == "default":
        return default_dataset()
    if not os.path.isfile(data.dataset):
        raise ConfigError(f"config [data] dataset: {data.dataset!r} is neither 'default' nor an existing file")
    return ReferenceDataset(data.dataset)


def _split(config: DataConfig, names: list[str], atoms: set[str]) -> dict[str, str]:
    """molecule name -> 'train' | 'validation' | 'test' | 'shared'."""
    shared = set(atoms if config.shared is None else config.shared)
    for n in shared:
        if n not in names:
            raise ConfigError(f"config [data] shared: {n!r} is not among the molecules of the run")
    out = {n: "shared" for n in shared}
    for split, listed in zip(SPLITS, (config.train, config.validation, config.test)):
        for n in listed:
            if n not in names:
                raise ConfigError(f"config [data] {split}: no molecule {n!r} in the dataset (it has {', '.join(names)})")
            if n in shared:
                raise ConfigError(f"config [data] {split}: {n!r} is shared by every split")
            out[n] = split
    rest = [n for n in names if n not in out]
    if rest:
        order = np.random.default_rng(config.split_seed).permutation(len(rest))
        fractions = np.asarray(config.split) / sum(config.split)
        counts = np.floor(fractions * len(rest)).astype(int)
        for k in np.argsort(-(fractions * len(rest) - counts))[: len(rest) - counts.sum()]:
            counts[k] += 1
        start = 0
        for split, count in zip(SPLITS, counts):
            for j in order[start : start + count]:
                out[rest[j]] = split
            start += count
    if not any(v == "train" for v in out.values()):
        raise ConfigError("config [data]: the training split is empty")
    return out


def _prepare(config: TrainConfig, functional: AbstractFunctional) -> _Prepared:
    dataset = _open_dataset(config.data)
    names = list(config.data.molecules) or list(dataset.names)
    for n in names:
        if n not in dataset.names:
            raise ConfigError(f"config [data] molecules: no molecule {n!r} in {dataset.path}")
    target = config.data.target
    missing = [n for n in names if target.lower() not in dataset.methods(n)]
    if missing:
        raise ConfigError(f"config [data] target: no {target!r} labels for {', '.join(missing)} in {dataset.path}")
    molecules = {n: dataset.molecule(n) for n in names}
    atoms = {n for n, m in molecules.items() if len(m.symbols) == 1}
    split_of = _split(config.data, names, atoms)

    spec = required_grid_operators(functional)
    systems = [System.from_pyscf(molecules[n].to_mole(dataset.basis), grid_level=dataset.grid_level,
                                 grid_operators=spec if spec else None) for n in names]
    batches = make_batches(systems, max_buckets=config.data.max_buckets, split_shells=config.data.split_shells,
                           max_block_groups=config.data.max_block_groups)
    # the model's geometry-only data (neighbour lists), per molecule of each batch, computed here on
    # the host: the compiled step then holds no host callback, so JAX's persistent compilation
    # cache can store it (the data depends on the geometry and the model's static settings only)
    batches = [eqx.tree_at(lambda b: b.system, b, prepare_system(functional, b.system)) for b in batches]
    targets, weights = [], []
    for b in batches:
        t = L.Targets.from_dataset(b, dataset, names, target)
        needs_density = [term for term in ("density", "non_self_consistent", "derivative") if getattr(config.loss, term)]
        if config.loss.trajectory and config.loss.trajectory_density:
            needs_density.append("trajectory (trajectory_density)")
        if needs_density and t.density_matrix is None:
            raise ConfigError(f"config [loss]: the {', '.join(needs_density)} term(s) need {target!r} density "
                              f"matrices, which {dataset.path} does not hold")
        rows = [names[int(i)] if m else None for i, m in zip(np.asarray(b.index), np.asarray(b.mask))]
        w = np.array([[1.0 if n is not None and (split_of[n] == s or (s == "train" and split_of[n] == "shared"))
                       else 0.0 for n in rows] for s in SPLITS])
        targets.append(t)
        weights.append(jnp.asarray(w))

    target_energy = {n: float(dataset.entry(n, target).energy) for n in names}
    # Atomization energies of the target method for every non-atomic molecule whose atoms are there.
    by_element = {molecules[n].symbols[0]: n for n in atoms}
    reaction_names, species, reference, rweights = [], [], [], []
    experiment = None
    if config.data.atomization_reference == "experiment":
        experiment = {r.name: r.reference for r in g2("g2").reactions}
    for n in names:
        if n in atoms or split_of[n] == "shared":
            continue
        mol = molecules[n]
        if mol.charge != 0 or any(s not in by_element for s in mol.symbols):
            continue
        counts: dict[str, float] = {}
        for s in mol.symbols:
            counts[by_element[s]] = counts.get(by_element[s], 0.0) + 1.0
        counts[n] = -1.0
        if experiment is not None and n not in experiment:
            raise ConfigError(f"config [data] atomization_reference: no experimental G2 atomization energy for {n!r}")
        reaction_names.append(n)
        species.append(counts)
        reference.append(sum(c * target_energy[m] for m, c in counts.items()) if experiment is None
                         else experiment[n])
        rweights.append([1.0 if split_of[n] == s else 0.0 for s in SPLITS])
    if config.loss.atomization and not reaction_names:
        raise ConfigError("config [loss] atomization: no molecule has all its free atoms in the run")
    reactions = reaction_weights = None
    if reaction_names:
        c = np.zeros((len(reaction_names), len(names)))
        for r, counts in enumerate(species):
            for m, coef in counts.items():
                c[r, names.index(m)] = coef
        reactions = L.Reactions(c, np.asarray(reference))
        reaction_weights = jnp.asarray(np.asarray(rweights).T)
    if config.loss.derivative:
        targets = _with_derivatives(config, batches, targets)
    excitations = _excitation_targets(config, dataset, names, molecules, systems, batches) if config.loss.excitation \
        else None
    if "uniform_gas" in config.loss.penalties and not isinstance(functional, AbstractSemilocalFunctional):
        raise ConfigError(f"config [loss] penalties: uniform_gas needs a semilocal functional, but the model is a "
                          f"{type(functional).__name__}")
    data = _StepData(batches, targets, weights, reactions, reaction_weights, excitations)
    return _Prepared(names, split_of, dataset, systems, data, reaction_names, species, np.asarray(reference),
                     target_energy)


def _reference_functional(name: str, key: str) -> AbstractFunctional:
    try:
        return get_functional(name)
    except InputError as err:
        raise ConfigError(f"config [loss] {key}: {err}; name a functional nlxc has (e.g. 'b3lyp')") from None


def _with_derivatives(config: TrainConfig, batches, targets):
    """The targets plus the first- and second-derivative labels of the derivative term, from nlxc's
    implementation of the reference functional at the dataset's density matrices."""
    name = config.loss.derivative_reference or config.data.target
    reference = _reference_functional(name, "derivative_reference" if config.loss.derivative_reference
                                      else "derivative (the reference is [data] target)")
    key = jax.random.key(config.run.seed)
    out = []
    for k, (b, t) in enumerate(zip(batches, targets)):
        out.append(t.with_derivatives(reference, b, key=jax.random.fold_in(key, k),
                                      n_directions=config.loss.derivative_directions))
    return out


def _pyscf_excitation_energies(molecule, basis: str, grid_level: int, method: str, density_matrix, n_states: int,
                               tda: bool) -> np.ndarray:
    """The `n_states` lowest TDDFT (or TDA) excitation energies (Hartree) of PySCF's density-fitted
    KS of `method` (settings of `nlxc.data.compute_references`), started from `density_matrix`."""
    from pyscf import df, dft

    mol = molecule.to_mole(basis)
    mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
    mf = mf.density_fit(auxbasis=df.make_auxbasis(mol))
    mf.xc = method
    mf.grids.level = grid_level
    mf.small_rho_cutoff = 0
    mf.conv_tol = 1e-10
    mf.max_cycle = 100
    mf.verbose = 0
    dm = np.asarray(density_matrix)
    mf.kernel(dm0=dm[0] + dm[1] if mol.spin == 0 else dm)
    if not mf.converged:
        raise ConfigError(f"config [loss] excitation: PySCF's {method} SCF of {molecule.name!r} did not converge")
    td = mf.TDA() if tda else mf.TDDFT()
    td.nstates = n_states
    td.verbose = 0
    td.kernel()
    if not np.all(td.converged):
        raise ConfigError(f"config [loss] excitation: PySCF's TDDFT of {molecule.name!r} did not converge")
    return np.sort(np.asarray(td.e, dtype=float))[:n_states]


def _excitation_targets(config: TrainConfig, dataset, names, molecules, systems, batches) -> list[ExcitationTargets]:
    """Per batch, the reference excitation energies of its molecules (PySCF TDDFT of
    `excitation_reference` at the dataset's density) and the padded occupied-virtual shape."""
    loss = config.loss
    method = loss.excitation_reference or config.data.target
    n = loss.excitation_states
    for name, system in zip(names, systems):
        nocc = np.asarray(system.n_electrons)
        dim = int(nocc[0] * (system.nmo - nocc[0])) if system.restricted else int(
            sum(o * (system.nmo - o) for o in nocc))
        if n > dim:
            raise ConfigError(f"config [loss] excitation_states: {n} excited states requested, but {name} has only "
                              f"{dim} single excitations")
    labels = {}
    for name in names:
        entry = dataset.entry(name, config.data.target)
        if entry.density_matrix is None:
            raise ConfigError(f"config [loss] excitation: no {config.data.target!r} density matrix for {name}")
        labels[name] = _pyscf_excitation_energies(molecules[name], dataset.basis, dataset.grid_level, method,
                                                  entry.density_matrix, n, loss.excitation_tda)
    out = []
    for b in batches:
        index, mask = np.asarray(b.index), np.asarray(b.mask)
        last = int(index[mask][-1])
        rows = [int(i) if m else last for i, m in zip(index, mask)]
        slots = occupied_virtual_slots([systems[i] for i in set(rows)])
        out.append(ExcitationTargets(np.stack([labels[names[i]] for i in rows]), slots))
    return out
