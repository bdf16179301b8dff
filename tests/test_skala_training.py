"""Fine-tuning Skala-1.0 through the SCF with `nlxc train` (`[model] baseline = "skala"`).

A tiny problem (H2 to train, LiH to validate, STO-3G, grid level 0, B3LYP total energies as
targets, computed here by PySCF) keeps the cost to one compilation of the training step per
mode, shared by every run of that mode in this module (the compiled step is cached on the
optimiser, loss and shapes, not on the output directory). That compilation (Skala's network
inside the SCF, differentiated twice by the implicit adjoint) takes over a minute on 2 cores,
so the training runs are `slow`; the default suite checks the second derivatives the adjoint
needs and which leaves each configuration trains:

- fully trainable (`train_baseline = true`, no correction): every one of Skala's weight arrays
  moves; a run interrupted after its first step resumes, through the `nlxc train` command, to
  the parameters, best step and losses of an uninterrupted run, bit for bit;
- frozen Skala with a trainable `AtomCentredCorrection` on top (slow: a second compilation):
  Skala's weights stay bit-for-bit those shipped, the correction's move, and the run resumes.

Skala's D3(BJ) term is on where `dftd3` is installed (it is a geometry-only constant).
"""

import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nlxc
from nlxc.cli import main
from nlxc.data import Molecule, compute_references
from nlxc.models import Skala
from nlxc.models.neighbours import atom_neighbours
from nlxc.train import TrainConfig, build_functional, load_checkpoint, train

pytestmark = pytest.mark.xdist_group("skala")

GEOMETRIES = {
    "H2": [("H", (0, 0, 0)), ("H", (0, 0, 0.7414))],
    "LiH": [("Li", (0, 0, 0)), ("H", (0, 0, 1.5949))],
}
BASIS, GRID_LEVEL, STEPS = "sto-3g", 0, 2
try:
    import dftd3  # noqa: F401

    BASELINE = "skala"  # with D3(BJ), as Skala defines its energies
except ImportError:
    BASELINE = "skala-nod3"
CORRECTION = {"width": 4, "depth": 1, "embedding_dim": 2, "final_scale": 1e-2}
MODELS = {
    "full": {"baseline": BASELINE, "correction": "none", "train_baseline": True},
    "frozen": {"baseline": BASELINE, "correction": "AtomCentredCorrection", "options": CORRECTION},
}


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    molecules = [Molecule.from_geometry(n, g) for n, g in GEOMETRIES.items()]
    path = tmp_path_factory.mktemp("data") / "skala_tiny.h5"
    compute_references(molecules, path, methods=("b3lyp",), basis=BASIS, grid_level=GRID_LEVEL, progress=False)
    return str(path)


def _config(dataset_path, output_dir, mode):
    return TrainConfig.from_dict({
        "run": {"name": f"skala-{mode}", "output_dir": str(output_dir), "seed": 1},
        "data": {"dataset": dataset_path, "target": "b3lyp", "train": ["H2"], "validation": ["LiH"]},
        "model": MODELS[mode],
        "loss": {"energy": 1.0, "atomization": 0.0},
        "optimizer": {"name": "adam", "learning_rate": 1e-4},
        "training": {"steps": STEPS, "checkpoint_every": 1, "progress": False, "plots": False},
        "evaluation": {"baselines": []},
    })


def _toml(config: TrainConfig) -> str:
    """`config` as the text of a TOML file (what a user passes to `nlxc train`)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None or key == "options" or (value == [] and key in ("train", "validation", "test")):
                continue
            lines.append(f"{key} = {json.dumps(value)}")
        if values.get("options"):
            lines.append(f"[{section}.options]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values["options"].items())
    return "\n".join(lines) + "\n"


def _arrays(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


def _skala_part(functional):
    """The Skala of a trained functional (alone, or the first term of `Skala + correction`)."""
    return functional if isinstance(functional, Skala) else functional.terms[0]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _interrupted_then_resumed(dataset_path, tmp_path, mode, *, cli):
    """A run stopped after its first step (checkpoint at step 1), then run again to its end."""
    config = _config(dataset_path, tmp_path / "interrupted", mode)

    def interrupt(step, metrics):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, callback=interrupt, evaluate=False)
    assert _json(tmp_path / "interrupted" / "last.json")["step"] == 1
    if cli:  # `nlxc train config.toml` resumes it
        path = tmp_path / "skala.toml"
        path.write_text(_toml(config))
        assert main(["train", str(path)]) == 0
        return load_checkpoint(tmp_path / "interrupted" / "final.eqx")[0]
    return train(config, evaluate=False).final_functional


def _check_run(out, result, mode):
    """Every step finite and accepted; the checkpoints a few Skala-sized arrays, loading back."""
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == list(range(STEPS + 1))
    for m in metrics:
        assert m["ok"] and not m["not_converged"], m
        assert np.isfinite(m["loss"]["train"]) and np.isfinite(m["loss"]["validation"]) and np.isfinite(m["grad_norm"])
        assert m["grad_norm"] > 0
    n_skala = sum(a.size for a in _arrays(Skala(dispersion=False)))
    functional_bytes = 8 * sum(a.size for a in _arrays(result.functional))
    for name in ("best.eqx", "final.eqx"):  # the functional's float64 leaves, little more
        assert functional_bytes <= os.path.getsize(out / name) < functional_bytes + 100_000
    # last.eqx: trainable parameters, Adam's two moments and the best parameters (4×), guesses
    trainable = n_skala if mode == "full" else sum(a.size for a in _arrays(result.functional.terms[1]))
    assert os.path.getsize(out / "last.eqx") < 8 * 4 * trainable + 100_000
    loaded, config = load_checkpoint(out / "best.eqx")
    assert config.model.baseline == BASELINE and type(loaded) is type(result.functional)
    for a, b in zip(_arrays(loaded), _arrays(result.functional), strict=True):
        np.testing.assert_array_equal(a, b)


def _check_resumed(out_a, result_a, out_b, final_b):
    for a, b in zip(_arrays(result_a.final_functional), _arrays(final_b), strict=True):
        np.testing.assert_array_equal(a, b)
    metrics_a, metrics_b = _metrics(out_a), _metrics(out_b)
    assert [m["step"] for m in metrics_b] == list(range(STEPS + 1))  # each step logged once
    assert [m["loss"] for m in metrics_a] == [m["loss"] for m in metrics_b]
    assert _json(out_b / "final.json")["best_step"] == result_a.best_step


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_second_derivatives_are_finite_where_a_spin_density_vanishes():
    """The SCF adjoint differentiates the Fock matrix, i.e. E_xc twice: at ρσ = 0 (the β channel
    of an H atom, padded grid points of a batch) Skala's ρσ^{4/3} must not give ∞ · 0 = NaN."""
    rng = np.random.default_rng(0)
    ngrid = 8
    atoms = jnp.asarray([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]])
    coords = jnp.asarray(rng.normal(size=(ngrid, 3)))
    weights = jnp.asarray(rng.uniform(0.1, 1.0, ngrid)).at[-2:].set(0.0)  # two padded points
    rho = jnp.asarray(rng.uniform(0.01, 1.0, (2, ngrid))).at[1].set(0.0).at[:, -2:].set(0.0)
    gradient = jnp.asarray(rng.normal(size=(2, 3, ngrid)) * 0.1).at[1].set(0.0).at[:, :, -2:].set(0.0)
    tau = jnp.asarray(rng.uniform(0.01, 1.0, (2, ngrid))).at[1].set(0.0).at[:, -2:].set(0.0)
    model = Skala(dispersion=False)
    neighbours = atom_neighbours(coords, weights, atoms, jnp.ones(2), 5.0, model.max_atoms)

    def energy(rho):
        e = model.energy_density(rho, gradient, tau, coords, weights, atoms, neighbours)
        return jnp.sum(weights * e)

    potential, second = jax.jvp(jax.grad(energy), (rho,), (jnp.ones_like(rho),))
    assert np.all(np.isfinite(np.asarray(potential))) and np.all(np.isfinite(np.asarray(second)))


def test_skala_configs_train_the_weights_they_say():
    """`[model] baseline = "skala"`: with `train_baseline` every Skala weight array is a trainable
    leaf; without it (and a correction on top) none is, and every correction array is."""
    config = _config("unused.h5", "unused", "full")
    functional, trainable = build_functional(config.model, seed=1)
    assert isinstance(functional, Skala) and functional.dispersion == (BASELINE == "skala")
    flags = jax.tree.leaves(trainable)
    assert len(flags) == len(_arrays(Skala(dispersion=False))) and all(flags)
    functional, trainable = build_functional(_config("unused.h5", "unused", "frozen").model, seed=1)
    assert isinstance(_skala_part(functional), Skala)
    assert not any(jax.tree.leaves(trainable.terms[0]))
    assert jax.tree.leaves(trainable.terms[1]) == [eqx.is_inexact_array(x) for x in jax.tree.leaves(functional.terms[1])]
    params, _ = eqx.partition(functional, trainable)
    assert sum(a.size for a in _arrays(params)) == sum(a.size for a in _arrays(functional.terms[1])) < 1000


def test_prepare_system_computes_skalas_geometry_data_on_the_host():
    """`nlxc.models.prepare_system` stores Skala's 5-Bohr neighbour list and (with `dftd3`) its
    D3(BJ) energy in the System, equal to what `prepare` computes with host callbacks (simple-DFT-D3
    called through `jax.pure_callback`), so the prepared model is the same either way."""
    mol = Molecule.from_geometry("LiH", GEOMETRIES["LiH"]).to_mole(BASIS)
    system = nlxc.System.from_pyscf(mol, grid_level=GRID_LEVEL)
    model = Skala(dispersion=BASELINE == "skala")
    prepared = nlxc.models.prepare_system(model, system)
    assert set(prepared.precomputed) == set(model.precomputed_keys)
    assert len(model.precomputed_keys) == 1 + model.dispersion
    ours = model.prepare(prepared)  # from the System
    theirs = eqx.filter_jit(lambda m, s: m.prepare(s))(model, system)  # from host callbacks
    for a, b in zip(jax.tree.leaves((ours.neighbours, ours.dispersion_energy)),
                    jax.tree.leaves((theirs.neighbours, theirs.dispersion_energy))):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    if model.dispersion:
        assert float(ours.dispersion_energy) < 0.0
    assert nlxc.models.prepare_system(model, prepared) is prepared  # nothing left to compute

@pytest.mark.slow
def test_fully_trainable_skala_trains_and_resumes_through_the_cli(dataset_path, tmp_path):
    out = tmp_path / "uninterrupted"
    result = train(_config(dataset_path, out, "full"), evaluate=False)
    _check_run(out, result, "full")
    assert isinstance(result.final_functional, Skala) and result.final_functional.dispersion == (BASELINE == "skala")
    # every weight array of Skala moved (Adam's first step moves each entry with a gradient by ~lr)
    shipped = _arrays(Skala(dispersion=False))
    for a, b in zip(shipped, _arrays(result.final_functional), strict=True):
        assert not np.array_equal(a, b)
        assert np.max(np.abs(a - b)) < 10 * 1e-4 * STEPS  # and by no more than the learning rate allows
    train_loss = [m["loss"]["train"] for m in _metrics(out)]
    assert train_loss[-1] < train_loss[0], train_loss

    final = _interrupted_then_resumed(dataset_path, tmp_path, "full", cli=True)
    _check_resumed(out, result, tmp_path / "interrupted", final)
    # a fine-tuned Skala is written in Skala's own weights layout and read back
    result.final_functional.save_weights(tmp_path / "tuned.npz")
    again = Skala(weights=tmp_path / "tuned.npz", dispersion=False)
    for a, b in zip(_arrays(again), _arrays(result.final_functional), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_frozen_skala_with_a_trainable_correction_trains_and_resumes(dataset_path, tmp_path):
    out = tmp_path / "uninterrupted"
    result = train(_config(dataset_path, out, "frozen"), evaluate=False)
    _check_run(out, result, "frozen")
    functional = result.final_functional
    assert isinstance(functional, nlxc.xc.Sum) and isinstance(_skala_part(functional), Skala)
    for a, b in zip(_arrays(Skala(dispersion=False)), _arrays(_skala_part(functional)), strict=True):
        np.testing.assert_array_equal(a, b)  # frozen: the shipped weights, bit for bit
    start, _ = build_functional(_config(dataset_path, out, "frozen").model, seed=1)
    moved = [not np.array_equal(a, b) for a, b in zip(_arrays(start.terms[1]), _arrays(functional.terms[1]),
                                                     strict=True)]
    assert all(moved), moved

    final = _interrupted_then_resumed(dataset_path, tmp_path, "frozen", cli=False)
    _check_resumed(out, result, tmp_path / "interrupted", final)
