"""The trainer's input checks, checkpoint integrity, output-directory ownership and interrupt
handling, without compiling a training step (those that need one are in tests/test_train.py).

Everything here runs before any JAX compilation of the step: configs, the run directory,
checkpoint files written with the trainer's own writers, and the evaluation cache.
"""

import gc
import json
import math
import os
import signal
import time

import h5py
import numpy as np
import pytest

import nlxc
from nlxc.cli import main
from nlxc.data import DatasetError, Molecule, ReferenceDataset, compute_references
from nlxc.train import (
    ConfigError,
    TrainConfig,
    TrainingInterrupted,
    build_functional,
    load_checkpoint,
    load_config,
    train,
)

pytestmark = pytest.mark.xdist_group("train")


def _one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------------------------
# Config values (issue 12, points 4, 7, 8, 9)
# --------------------------------------------------------------------------------------------

BAD_VALUES = [
    ({"optimizer": {"learning_rate": math.inf}}, r"\[optimizer\] learning_rate: expected a finite number, got inf"),
    ({"optimizer": {"learning_rate": math.nan}}, r"\[optimizer\] learning_rate: expected a finite number, got nan"),
    ({"optimizer": {"learning_rate": -1e-3}}, r"\[optimizer\] learning_rate: must be positive, got -0.001"),
    ({"optimizer": {"learning_rate": 0}}, r"\[optimizer\] learning_rate: must be positive"),
    ({"optimizer": {"clip_norm": math.inf}}, r"\[optimizer\] clip_norm: expected a finite number"),
    ({"loss": {"energy": math.inf}}, r"\[loss\] energy: expected a finite number"),
    ({"data": {"split": [0.6, math.nan, 0.2]}}, r"\[data\] split\[1\]: expected a finite number"),
    ({"data": {"train": []}}, r"\[data\] train: the list is empty"),
    ({"data": {"validation": []}}, r"\[data\] validation: the list is empty"),
    ({"data": {"test": []}}, r"\[data\] test: the list is empty"),
    ({"data": {"train": ["H2", "LiH", "H2"]}}, r"\[data\] train: 'H2' listed twice in train"),
    ({"data": {"train": ["H2"], "test": ["H2"]}}, r"\[data\]: molecules in more than one split: H2"),
    ({"training": {"max_failed_steps": 0}}, r"\[training\] max_failed_steps: must be at least 1"),
]


@pytest.mark.parametrize("mapping, message", BAD_VALUES)
def test_non_finite_non_positive_and_empty_values_are_config_errors(mapping, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig.from_dict(mapping)
    _one_line(info)


BAD_OPTIONS = [
    ("AtomCentredCorrection", {"depth": -1}, r"\[model.options\] depth: must be at least 0 \(a count of layers\), got -1"),
    ("AtomCentredCorrection", {"width": -4}, r"\[model.options\] width: must be at least 1 \(a size\), got -4"),
    ("AtomCentredCorrection", {"width": 16.5}, r"\[model.options\] width: expected an integer, got 16.5"),
    ("AtomCentredCorrection", {"final_scale": "small"}, r"\[model.options\] final_scale: expected a number, got 'small'"),
    ("AtomCentredCorrection", {"final_scale": math.inf}, r"\[model.options\] final_scale: expected a finite number"),
    ("AtomCentredCorrection", {"width": True}, r"\[model.options\] width: expected an integer, got True"),
    ("AtomCentredCorrection", {"projection": "x"}, r"\[model.options\] projection: .* cannot be set in a config"),
    ("ConstrainedMetaGGA", {"depth": -1}, r"\[model.options\] depth: must be at least 0"),
    ("ConstrainedMetaGGA", {"width": 0}, r"\[model.options\] width: must be at least 1"),
    ("NonlocalEnhancedExchange", {"scales": [0.5, "x"]}, r"\[model.options\] scales\[1\]: expected a number, got 'x'"),
    ("NonlocalEnhancedExchange", {"use_alpha": 1}, r"\[model.options\] use_alpha: expected true or false, got 1"),
    ("CoarseGraphNetwork", {"cutoff": -2.0}, r"\[model.options\] cutoff: must be positive"),
]


@pytest.mark.parametrize("correction, options, message", BAD_OPTIONS)
def test_model_options_are_checked_against_the_constructor(correction, options, message):
    config = TrainConfig.from_dict({"model": {"correction": correction, "options": options}})
    with pytest.raises(ConfigError, match=message) as info:
        build_functional(config.model)
    _one_line(info)


def test_written_configs_round_trip():
    """A config nlxc wrote (a sidecar) records splits that were not given as empty lists."""
    config = TrainConfig.from_dict({"run": {"name": "x"}, "data": {"train": ["H2"]}})
    assert config.to_dict()["data"]["validation"] == []
    assert TrainConfig.from_dict(config.to_dict(), written=True) == config


def test_good_model_options_still_build():
    # an int where a float is expected is fine; depth 0 is a linear network
    config = TrainConfig.from_dict({"model": {"correction": "ConstrainedMetaGGA",
                                              "options": {"width": 2, "depth": 0, "final_scale": 1}}})
    functional, trainable = build_functional(config.model)
    assert isinstance(functional, nlxc.xc.AbstractFunctional)


def test_yaml_reads_exponent_numbers_as_floats_and_stays_strict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  learning_rate: 2e-3\n  clip_norm: 1E+1\nmodel:\n  correction: ConstrainedMetaGGA\n"
                    "  options:\n    final_scale: 1e-3\n    width: 4\n")
    config = load_config(path)
    assert config.optimizer.learning_rate == 2e-3 and config.optimizer.clip_norm == 10.0
    assert config.model.options["final_scale"] == 1e-3
    build_functional(config.model)  # the option is a float, as the constructor wants
    # still strict: a word, a quoted string, a YAML infinity
    for text, message in (("learning_rate: fast", "expected a number, got 'fast'"),
                          ("learning_rate: '2e-3'", "expected a number, got '2e-3'"),
                          ("learning_rate: .inf", "expected a finite number, got inf")):
        path.write_text(f"optimizer:\n  {text}\n")
        with pytest.raises(ConfigError, match=message) as info:
            load_config(path)
        assert str(path) in _one_line(info)
    # and TOML is unchanged: a string is not a number
    toml = tmp_path / "c.toml"
    toml.write_text('[optimizer]\nlearning_rate = "2e-3"\n')
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(toml)


def test_output_dir_does_not_count_in_the_resume_comparison(tmp_path):
    a = TrainConfig.from_dict({"run": {"output_dir": "runs/x"}})
    b = TrainConfig.from_dict({"run": {"output_dir": str(tmp_path / "elsewhere" / "x")}})
    assert a.differences(b) == []
    c = TrainConfig.from_dict({"run": {"output_dir": "runs/x", "seed": 3}})
    assert a.differences(c) == ["[run] seed"]


# --------------------------------------------------------------------------------------------
# Checkpoints carry and verify a SHA-256 (point 2)
# --------------------------------------------------------------------------------------------

MODEL = {"baseline": "pbe", "correction": "AtomCentredCorrection",
         "options": {"width": 4, "depth": 1, "embedding_dim": 2, "final_scale": 1e-2}}


@pytest.fixture
def checkpoint(tmp_path):
    from nlxc.train._checkpoint import _save_functional

    config = TrainConfig.from_dict({"run": {"output_dir": str(tmp_path)}, "model": MODEL})
    functional, _ = build_functional(config.model, config.run.seed)
    path = tmp_path / "best.eqx"
    _save_functional(str(path), config, functional, {"best_step": 0, "best_value": 1.0, "steps": 0})
    return path, functional


@pytest.mark.parametrize("name", ["AtomCentredCorrection-pbe", "LocalHybrid-pbe", "ConstrainedMetaGGA-none"])
def test_checkpoints_of_the_previous_layout_load(name):
    """Checkpoints written by nlxc at e355430 (before nlxc/train.py and nlxc/losses.py became
    packages, tests/data/checkpoints_e355430/README.md) load, with the leaves of a fresh build of
    their configuration (seed 0, as they were written)."""
    import equinox as eqx
    import jax

    path = os.path.join(os.path.dirname(__file__), "data", "checkpoints_e355430", f"{name}.eqx")
    loaded, config = load_checkpoint(path)
    fresh, _ = build_functional(config.model, config.run.seed)
    assert type(loaded) is type(fresh)
    for a, b in zip(jax.tree.leaves(eqx.filter(loaded, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(fresh, eqx.is_inexact_array)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_round_trip_and_sidecar_digest(checkpoint):
    import hashlib

    path, functional = checkpoint
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == "nlxc-checkpoint" and meta["kind"] == "functional"
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    loaded, config = load_checkpoint(path)
    import equinox as eqx
    import jax

    for a, b in zip(jax.tree.leaves(eqx.filter(loaded, eqx.is_inexact_array)),
                    jax.tree.leaves(eqx.filter(functional, eqx.is_inexact_array)), strict=True):
        np.testing.assert_array_equal(a, b)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_corrupt_checkpoint_is_refused(checkpoint, capsys):
    path, _ = checkpoint
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 400] = bytes(b ^ 0xFF for b in data[middle:middle + 400])
    path.write_bytes(bytes(data))
    with pytest.raises(nlxc.InputError, match=r"does not match the SHA-256 in best.json") as info:
        load_checkpoint(path)
    assert str(path) in _one_line(info)
    # the CLI: one line, exit 2, nothing evaluated
    assert main(["evaluate", str(path), "--set", "default", "--molecules", "LiH", "--baselines", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "SHA-256" in err and str(path) in err


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2].encode(), "is not valid JSON"),
    (lambda text: b"\xff\xfe" + text.encode("utf-16-le"), "is not UTF-8 text"),
    (lambda text: b"", "is not valid JSON"),
    (lambda text: b"[1, 2]", "holds no config"),
])
def test_damaged_sidecar_gives_one_line(checkpoint, damage, message):
    path, _ = checkpoint
    sidecar = path.with_suffix(".json")
    sidecar.write_bytes(damage(sidecar.read_text()))
    with pytest.raises(nlxc.InputError, match=message) as info:
        load_checkpoint(path)
    assert str(sidecar) in _one_line(info)


def test_kill_between_the_two_renames_leaves_the_previous_checkpoint(checkpoint):
    """The sidecar is renamed into place first and also names the previous digest: a kill before
    the checkpoint's own rename leaves the previous, complete checkpoint, which loads."""
    from nlxc.train._checkpoint import _save_functional

    path, functional = checkpoint
    old = path.read_bytes()
    config = load_checkpoint(path)[1]
    _save_functional(str(path), config, functional, {"best_step": 1, "best_value": 0.5, "steps": 1})
    path.write_bytes(old)  # as if the rename of the new checkpoint never happened
    load_checkpoint(path)


def test_checkpoint_of_the_previous_format_still_loads(checkpoint):
    path, _ = checkpoint
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    legacy = {"config": meta["config"], "best_step": 0, "best_value": 1.0, "steps": 0}  # no format, no digest
    sidecar.write_text(json.dumps(legacy))
    with pytest.warns(UserWarning, match="without a checksum"):
        load_checkpoint(path)


def test_resumable_state_is_not_a_functional(tmp_path):
    from nlxc.train._checkpoint import _write_checkpoint

    config = TrainConfig.from_dict({"model": MODEL})
    _write_checkpoint(str(tmp_path / "last.eqx"), (np.zeros(3),), {"kind": "state", "config": config.to_dict()})
    with pytest.raises(nlxc.InputError, match="resumable training state"):
        load_checkpoint(tmp_path / "last.eqx")


# --------------------------------------------------------------------------------------------
# The run directory: only files the run wrote are ever overwritten (points 1, 2, 6)
# --------------------------------------------------------------------------------------------


def _run_config(tmp_path, out, **training):
    return TrainConfig.from_dict({"run": {"name": "tiny", "output_dir": str(out), "seed": 1},
                                  "data": {"dataset": str(tmp_path / "never-opened.h5")},
                                  "model": MODEL, "training": {"steps": 2, "progress": False, **training}})


def test_foreign_files_in_output_dir_are_never_overwritten(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.md").write_text("my own notes\n")
    (out / "parity.png").write_bytes(b"my plot")
    (out / "notes.txt").write_text("not a name the trainer writes\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(nlxc.InputError, match=r"already holds parity.png, results.md, which this run would write "
                                              r"but did not write") as info:
        train(_run_config(tmp_path, out), evaluate=False)
    _one_line(info)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # checked before any work
    # the same through the CLI, with --output-dir: one line, exit 2
    config = tmp_path / "c.toml"
    config.write_text(f'[run]\nname = "tiny"\n[data]\ndataset = "{tmp_path / "never-opened.h5"}"\n')
    assert main(["train", str(config), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "results.md" in err and "parity.png" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_foreign_file_in_a_resumable_run_is_refused(tmp_path):
    from nlxc.train._checkpoint import _write_checkpoint, _write_json

    out = tmp_path / "run"
    out.mkdir()
    config = _run_config(tmp_path, out)
    _write_checkpoint(str(out / "last.eqx"), (np.zeros(3),), {"kind": "state", "config": config.to_dict(), "step": 1})
    _write_json(str(out / "manifest.json"), {"format": "nlxc-run-manifest",
                                             "files": ["config.json", "metrics.jsonl", "last.eqx", "last.json"]})
    (out / "results.md").write_text("mine\n")
    with pytest.raises(nlxc.InputError, match=r"already holds results.md"):
        train(config, evaluate=False)
    assert (out / "results.md").read_text() == "mine\n"


def test_corrupt_resumable_checkpoint_is_refused_before_any_work(tmp_path):
    from nlxc.train._checkpoint import _write_checkpoint, _write_json

    out = tmp_path / "run"
    out.mkdir()
    config = _run_config(tmp_path, out)
    _write_checkpoint(str(out / "last.eqx"), (np.arange(100.0),), {"kind": "state", "config": config.to_dict(),
                                                                     "step": 1})
    _write_json(str(out / "manifest.json"), {"format": "nlxc-run-manifest", "files": ["last.eqx", "last.json"]})
    data = bytearray((out / "last.eqx").read_bytes())
    data[-40:] = bytes(40)
    (out / "last.eqx").write_bytes(bytes(data))
    with pytest.raises(nlxc.InputError, match=r"last.eqx does not match the SHA-256 in last.json") as info:
        train(config, evaluate=False)  # the dataset is never opened: the check comes first
    _one_line(info)
    (out / "last.json").write_bytes(b'{"config": {"run": {')  # truncated sidecar
    with pytest.raises(nlxc.InputError, match=r"last.json is not valid JSON") as info:
        train(config, evaluate=False)
    _one_line(info)


def test_moved_run_directory_is_resumable(tmp_path, monkeypatch):
    """The checkpoint of a run made in another directory (or named by another path) is accepted."""
    from nlxc.train._trainer import _check_output_dir
    from nlxc.train._checkpoint import _write_checkpoint, _write_json

    out = tmp_path / "moved"
    out.mkdir()
    written = _run_config(tmp_path, "/somewhere/else/run")
    _write_checkpoint(str(out / "last.eqx"), (np.zeros(3),), {"kind": "state", "config": written.to_dict(), "step": 1})
    _write_json(str(out / "manifest.json"), {"format": "nlxc-run-manifest", "files": ["last.eqx", "last.json"]})
    (tmp_path / "x").mkdir()
    monkeypatch.chdir(tmp_path)
    for spelling in ("moved", "./moved", str(out), str(tmp_path / "x" / ".." / "moved")):
        _, resume, owned = _check_output_dir(_run_config(tmp_path, spelling))
        assert resume is not None and {"last.eqx", "last.json"} <= owned


def test_metrics_log_cut_short_by_a_kill(tmp_path):
    from nlxc.train._trainer import _metrics_before

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1}\n{"step": 2}\n{"st')
    assert _metrics_before(str(path), 2) == b'{"step": 0}\n{"step": 1}\n'
    path.write_bytes(b'{"step": 0}\n\xff\xfe\n{"step": 2}\n')
    with pytest.raises(nlxc.InputError, match="line 2 is not a metrics record"):
        _metrics_before(str(path), 2)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path, monkeypatch):
    from nlxc.train._checkpoint import _write_bytes

    target = tmp_path / "last.eqx"
    target.write_bytes(b"old")

    def broken(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(KeyboardInterrupt):
        _write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["last.eqx"]


# --------------------------------------------------------------------------------------------
# Ctrl-C (point 3): a KeyboardInterrupt lost in a garbage-collector callback is raised again
# --------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_interrupt_lost_in_a_gc_callback_is_raised_again():
    from nlxc.train._trainer import _InterruptGuard

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    swallowed = []

    def slow_callback(phase, info):  # like JAX's: Python prints and drops what it raises
        if phase == "start" and not swallowed:
            swallowed.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here, inside the callback

    try:
        with _InterruptGuard() as guard:
            assert guard.installed
            gc.callbacks.append(slow_callback)
            try:
                gc.collect()  # the KeyboardInterrupt is raised in the callback and lost
            finally:
                gc.callbacks.remove(slow_callback)
            assert swallowed
            t0 = time.perf_counter()
            with pytest.raises(KeyboardInterrupt):
                while time.perf_counter() - t0 < 5:
                    time.sleep(0.01)
            guard.handle()
            assert time.perf_counter() - t0 < 2
            time.sleep(0.7)  # no repetition after it is handled
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_interrupt_inside_a_deferred_block_is_raised_when_it_ends():
    """The trainer writes a step's metrics line and takes the state it describes in such a block:
    a Ctrl-C between the two must not leave a checkpoint without that step (CI, stop 27)."""
    from nlxc.train._trainer import _InterruptGuard

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with _InterruptGuard() as guard:
            with pytest.raises(KeyboardInterrupt):
                with guard.deferred():
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.05)  # the handler runs here and does not raise
                    done.append("line")
                    done.append("state")
            guard.handle()
            assert done == ["line", "state"]
            with guard.deferred():  # nothing pending: no interruption afterwards
                done.append("again")
    finally:
        signal.signal(signal.SIGINT, previous)


def test_training_interrupted_is_a_keyboard_interrupt():
    err = TrainingInterrupted("x", checkpoint=None, step=None, pending=True)
    assert isinstance(err, KeyboardInterrupt) and err.pending and err.checkpoint is None


# --------------------------------------------------------------------------------------------
# The evaluation cache: every read verifies the checksum (point 2)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache") / "evaluation.h5"
    molecules = [Molecule.from_geometry("H2", [("H", (0, 0, 0)), ("H", (0, 0, 0.7414))]),
                 Molecule.from_geometry("H", [("H", (0, 0, 0))], spin=1)]
    compute_references(molecules, path, methods=("pbe",), basis="sto-3g", grid_level=0, progress=False)
    return str(path), molecules


def _tampered_copy(source, tmp_path, edit):
    import shutil

    path = tmp_path / "tampered.h5"
    shutil.copy(source, path)
    with h5py.File(path, "r+") as f:
        edit(f["molecules"]["H2"]["pbe"])
    return str(path)


@pytest.mark.parametrize("edit", [
    lambda g: g.attrs.__setitem__("energy", float(g.attrs["energy"]) - 0.016),  # 10 kcal/mol
    lambda g: g["density_matrix"].__setitem__((0, 0, 0), g["density_matrix"][0, 0, 0] + 1e-3),
], ids=["energy", "density"])
def test_tampered_evaluation_cache_is_refused(cache, tmp_path, edit):
    from nlxc.evaluation import baseline_energies

    path, molecules = cache
    assert set(ReferenceDataset(path).energies("pbe")) == {"H2", "H"}
    tampered = _tampered_copy(path, tmp_path, edit)
    dataset = ReferenceDataset(tampered)  # the index opens; no data reach the caller unverified
    with pytest.raises(DatasetError, match=r"entry H2/pbe does not match its checksum") as info:
        dataset.energies("pbe")
    assert tampered in _one_line(info)
    with pytest.raises(DatasetError, match=r"delete the cache file") as info:
        baseline_energies(molecules, ["pbe"], "sto-3g", 0, tampered)
    assert tampered in _one_line(info)


# --------------------------------------------------------------------------------------------
# A failed adjoint solve is a value inside jit, not an exception (point 5)
# --------------------------------------------------------------------------------------------


def test_failed_linear_solve_in_a_gradient_is_a_value():
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import lineax as lx

    from nlxc.scf import FAILED_SOLVE, FailAsValue

    operator = lx.MatrixLinearOperator(jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)) + 0.5 * np.eye(6)))
    b = jnp.arange(1.0, 7.0)

    def gradient(solver):
        return eqx.filter_jit(jax.grad(lambda b: jnp.sum(jnp.sin(lx.linear_solve(operator, b, solver).value))))(b)

    failing = lx.BiCGStab(rtol=1e-14, atol=1e-14, max_steps=1)
    with pytest.raises((eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)):
        gradient(failing).block_until_ready()  # lineax alone: an exception out of the compiled function
    g = np.asarray(gradient(FailAsValue(failing)))
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.sqrt(np.sum(g**2)))  # what the training step rejects
    working = lx.BiCGStab(rtol=1e-12, atol=1e-12, max_steps=100)
    np.testing.assert_array_equal(gradient(FailAsValue(working)), gradient(working))  # no change when it works
    nan_input = lx.linear_solve(operator, b.at[0].set(jnp.nan), FailAsValue(working)).value
    assert np.all(np.asarray(nan_input) == FAILED_SOLVE)
