"""Every loss term of `[loss]` and the least-squares optimisers of `[optimizer]`, through configs.

A tiny problem: H2, LiH, HF, H2O in STO-3G at grid level 0 with PBE labels (PySCF, computed
here). The Levenberg–Marquardt runs share one compiled step (same loss, shapes and solver); the
run with every loss term at once is in the slow set (its step compiles third derivatives of the
functional, the unrolled SCF and the dense response matrices).
"""

import io
import itertools
import json
import shutil

import equinox as eqx
import h5py
import jax
import numpy as np
import pytest

from nlxc.data import Molecule, compute_references
from nlxc.train import ConfigError, TrainConfig, TrainingError, build_functional, train

pytestmark = pytest.mark.xdist_group("train_losses")

GEOMETRIES = {
    "H2": [("H", (0, 0, 0)), ("H", (0, 0, 0.7414))],
    "LiH": [("Li", (0, 0, 0)), ("H", (0, 0, 1.5949))],
    "HF": [("F", (0, 0, 0)), ("H", (0, 0, 0.9168))],
    "H2O": [("O", (0, 0, 0.1173)), ("H", (0, 0.7572, -0.4692)), ("H", (0, -0.7572, -0.4692))],
}
LM_STEPS = 6


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    molecules = [Molecule.from_geometry(n, g) for n, g in GEOMETRIES.items()]
    path = tmp_path_factory.mktemp("data") / "tiny_pbe.h5"
    compute_references(molecules, path, methods=("pbe",), basis="sto-3g", grid_level=0, progress=False)
    return str(path)


def _lm_config(dataset_path, output_dir, **training):
    """A neural LDA learning PBE total energies (and the uniform-gas limit) by Levenberg–Marquardt."""
    return TrainConfig.from_dict({
        "run": {"name": "lm", "output_dir": str(output_dir), "seed": 0},
        "data": {"dataset": dataset_path, "target": "pbe", "train": ["H2", "LiH", "HF"], "test": ["H2O"]},
        "model": {"baseline": "none", "correction": "NeuralLDA", "options": {"width": 4, "depth": 1}},
        "loss": {"energy": 1.0, "atomization": 0.0, "penalties": {"uniform_gas": 1e-3}},
        "optimizer": {"name": "levenberg-marquardt"},
        "training": {"steps": LM_STEPS, "checkpoint_every": 1, "progress": False, "plots": False, **training},
    })


def _metrics(path):
    with open(path / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array))]


@pytest.fixture(scope="module")
def lm_run(dataset_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lm"
    return out, train(_lm_config(dataset_path, out), evaluate=False)


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_levenberg_marquardt_trains(lm_run):
    out, result = lm_run
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == list(range(LM_STEPS + 1))
    assert all(m["ok"] and not m["not_converged"] for m in metrics)
    assert all(isinstance(m["accepted"], bool) for m in metrics) and metrics[0]["accepted"]
    loss = [m["loss"]["train"] for m in metrics]
    # a random neural LDA is ~0.3 Ha off; a few Gauss-Newton steps on 3 residuals fit them
    assert loss[0] > 1e-2 and min(loss) < 1e-3 * loss[0], loss
    assert set(metrics[0]["terms"]) == {"energy", "penalty_uniform_gas"}
    # rejected proposals never become the parameters: the accepted losses decrease
    accepted = [m["loss"]["train"] for m in metrics if m["accepted"]]
    assert all(b < a for a, b in itertools.pairwise(accepted)), accepted
    best = min(range(len(metrics)), key=lambda k: metrics[k]["loss"]["train"])
    assert result.best_step == best
    assert all(np.all(np.isfinite(a)) for a in _leaves(result.functional))


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_levenberg_marquardt_resumes_exactly(dataset_path, lm_run, tmp_path):
    out_a, result_a = lm_run
    config = _lm_config(dataset_path, tmp_path / "interrupted")

    def interrupt(step, metrics):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, callback=interrupt, evaluate=False)
    result_b = train(config, evaluate=False)  # resumes at step 3: solver state, trust region and guesses
    for a, b in zip(_leaves(result_a.final_functional), _leaves(result_b.final_functional), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [m["loss"] for m in _metrics(out_a)] == [m["loss"] for m in _metrics(tmp_path / "interrupted")]


def _nan_label_dataset(dataset_path, path, molecule="LiH"):
    from nlxc.data._reference import _digest, _python

    shutil.copy(dataset_path, path)
    with h5py.File(path, "r+") as f:
        g = f["molecules"][molecule]["pbe"]
        g.attrs["energy"] = np.nan
        arrays = {k: np.asarray(g[k][()]) for k in g}
        g.attrs["data_sha256"] = _digest(arrays, {k: _python(v) for k, v in g.attrs.items()})
    return str(path)


@pytest.mark.slow  # moved from the default suite to keep it under 20 min cold (2026-12-07)
def test_levenberg_marquardt_failed_steps_keep_the_parameters(dataset_path, tmp_path):
    data = _nan_label_dataset(dataset_path, tmp_path / "nan.h5")
    out = tmp_path / "failing"
    config = _lm_config(data, out)
    with pytest.raises(TrainingError, match="2 consecutive failed steps") as info:
        train(config, evaluate=False)
    assert "\n" not in str(info.value)
    records = _metrics(out)
    assert [(r["step"], r["ok"], r["accepted"]) for r in records] == [(0, False, False), (1, False, False)]
    assert all("training loss not finite" in r["reason"] for r in records)
    functional, trainable = build_functional(config.model, config.run.seed)
    initial = _leaves(eqx.partition(functional, trainable)[0])
    from nlxc.train._checkpoint import _read_checkpoint, _read_sidecar

    path = str(out / "last.eqx")
    raw = _read_checkpoint(path, _read_sidecar(path))
    f, stored = io.BytesIO(raw), []
    while f.tell() < len(raw):
        stored.append(np.load(f))
    for a, b in zip(initial, stored[: len(initial)], strict=True):
        np.testing.assert_array_equal(a, b)


BAD = [
    ({"loss": {"penalties": {"lieb_oxfrd": 1.0}}}, "config [loss] penalties: unknown penalty 'lieb_oxfrd'; did you mean 'lieb_oxford'?"),
    ({"loss": {"penalties": {"lieb_oxford": -1.0}}}, "config [loss] penalties lieb_oxford: expected a non-negative number"),
    ({"loss": {"trajectory": 1.0, "trajectory_steps": 3, "trajectory_skip": 3}}, "config [loss] trajectory_skip: must be in [0, trajectory_steps = 3)"),
    ({"loss": {"trajectory_discount": 0.0}}, "config [loss] trajectory_discount: must be in (0, 1]"),
    ({"loss": {"derivative": 1.0, "gradient_weight": 0.0, "hessian_weight": 0.0}}, "config [loss] derivative: gradient_weight and hessian_weight are both zero"),
    ({"loss": {"derivative_directions": 0}}, "config [loss] derivative_directions: must be at least 1"),
    ({"loss": {"excitation": 1.0, "excitation_states": 0}}, "config [loss] excitation_states: must be at least 1"),
    ({"loss": {"excitation": 1.0, "kind": "huber"}}, "config [loss] kind: the excitation term takes 'mse' or 'mae'"),
    ({"loss": {"excitation_tda": "yes"}}, "config [loss] excitation_tda: expected true or false"),
    ({"optimizer": {"name": "levenberg-marquart"}}, "config [optimizer] name: unknown optimiser 'levenberg-marquart'"),
    ({"optimizer": {"name": "gauss-newton"}, "loss": {"kind": "mae"}}, "config [loss] kind: [optimizer] name = 'gauss-newton' minimises a sum of squared residuals: use kind = 'mse'"),
    ({"optimizer": {"name": "levenberg-marquardt", "rtol": 0}}, "config [optimizer] rtol: must be positive"),
]


@pytest.mark.parametrize("mapping, message", BAD)
def test_bad_loss_and_optimizer_configs_give_one_line_errors(mapping, message):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(mapping)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_new_loss_keys_round_trip_and_defaults():
    config = TrainConfig.from_dict({"loss": {"derivative": 0.5, "excitation": 2.0, "penalties": {"spin_scaling": 1},
                                             "trajectory": 1.0, "trajectory_steps": 5}})
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())), written=True)
    assert again == config and hash(again.loss) == hash(config.loss)
    assert config.loss.weights() == {"atomization": 1.0, "trajectory": 1.0, "derivative": 0.5, "excitation": 2.0}
    assert dict(config.loss.penalties) == {"spin_scaling": 1.0}
    assert not config.optimizer.least_squares
    # a config written before these keys existed reads with the defaults (old run directories resume)
    old = config.to_dict()
    for key in ("trajectory", "derivative", "excitation", "penalties", "trajectory_steps"):
        old["loss"].pop(key)
    assert TrainConfig.from_dict(old, written=True).loss.trajectory == 0.0


@pytest.mark.slow  # ~2-4 min on 2 cores: the step compiles every term at once
def test_every_loss_term_through_one_config(dataset_path, tmp_path):
    """PBE with trainable parameters, trained on PBE labels with every term: at step 0 the
    functional *is* the reference, so each term that compares with the labels (SCF energy and
    density, energies at the reference density, orbital gradient and Hessian, and the lowest
    excitation energy against PySCF's TDA computed by the trainer) is zero to round-off; the
    trajectory term (3 unrolled SCF iterations from the initial guess) is not; after one Adam
    step every term is finite and the labelled ones have moved off zero."""
    out = tmp_path / "all"
    config = TrainConfig.from_dict({
        "run": {"name": "all", "output_dir": str(out)},
        "data": {"dataset": dataset_path, "target": "pbe", "train": ["H2", "LiH"], "validation": ["HF"],
                 "test": ["H2O"]},
        "model": {"baseline": "pbe", "correction": "none", "train_baseline": True},
        "loss": {"energy": 1.0, "atomization": 0.0, "density": 1.0, "non_self_consistent": 1.0,
                 "trajectory": 1.0, "trajectory_steps": 3, "trajectory_density": 0.5,
                 "derivative": 1.0, "derivative_directions": 1, "excitation": 1.0, "excitation_states": 1,
                 "penalties": {"lieb_oxford": 1.0, "correlation_sign": 1.0, "spin_scaling": 1.0, "uniform_gas": 1.0}},
        "optimizer": {"name": "adam", "learning_rate": 1e-3},
        "training": {"steps": 1, "progress": False, "plots": False},
    })
    train(config, evaluate=False)
    first, second = _metrics(out)
    labelled = ("energy", "density", "non_self_consistent", "derivative", "excitation")
    assert set(first["terms"]) == set(labelled) | {"trajectory", "penalty_lieb_oxford", "penalty_correlation_sign",
                                                     "penalty_spin_scaling", "penalty_uniform_gas"}
    for term in labelled:
        assert max(first["terms"][term]) < 1e-12, (term, first["terms"][term])
    assert first["terms"]["trajectory"][0] > 1e-5
    assert first["terms"]["penalty_uniform_gas"][0] < 1e-10  # PBE reduces to PW92 + Slater
    assert first["ok"] and second["ok"]
    for term in labelled:
        assert 1e-12 < second["terms"][term][0] < 1e-2, (term, second["terms"][term])
    assert all(np.isfinite(v) for t in second["terms"].values() for v in t)


@pytest.mark.slow  # ~1-2 min: compiles the Gauss-Newton step
def test_gauss_newton_trains(dataset_path, tmp_path):
    config = _lm_config(dataset_path, tmp_path / "gn")
    config = TrainConfig.from_dict({**config.to_dict(), "optimizer": {"name": "gauss-newton"},
                                    "data": {**config.to_dict()["data"], "validation": ["HF"], "train": ["H2", "LiH"]}},
                                   written=True)
    train(config, evaluate=False)
    loss = [m["loss"]["train"] for m in _metrics(tmp_path / "gn")]
    assert min(loss) < 1e-2 * loss[0], loss
