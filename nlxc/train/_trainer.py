"""The training loop: output directory, resumption, interruption, metrics and the epilogue."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._config import (
    ConfigError,
    TrainConfig,
    load_config,
)
from .._errors import InputError
from ..xc import AbstractFunctional
from ._build import build_functional, build_optimizer
from ._checkpoint import (
    MANIFEST,
    OUTPUT_FILES,
    TrainState,
    _counters,
    _read_checkpoint,
    _read_json,
    _read_sidecar,
    _save_functional,
    _save_state,
    _sidecar_config,
    _write_bytes,
    _write_json,
)
from ._common import SPLITS, TrainingError, TrainingInterrupted
from ._data import _prepare, _Prepared
from ._report import (
    _energies_by_name,
    _held_out_report,
    _split_stats,
    plot_learning_curve,
)
from ._step import (
    _GRADIENT_NOT_FINITE,
    _LOSS_NOT_FINITE,
    _SCF_FAILED,
    _UPDATE_NOT_FINITE,
    LossSpec,
    _Carry,
    _initial_guesses,
    _run_step,
    _StepRaised,
    init_optimizer_state,
)

# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    """What [`train`][nlxc.train.train] returns.

    - `functional`: the best functional (lowest validation loss; training loss if there is no
      validation split).
    - `final_functional`: the functional after the last step.
    - `best_step`, `steps`: the step of the best parameters and the number of steps taken.
    - `output_dir`: the run directory (metrics, checkpoints, plots, results).
    - `results`: the held-out evaluation (also in `results.json`), or `None` if the run
      was stopped before its end.
    """

    functional: AbstractFunctional
    final_functional: AbstractFunctional
    best_step: int
    steps: int
    output_dir: str
    results: dict | None


class _Outputs:
    """The files of a run directory that this run owns, kept in `manifest.json`.

    `train` writes only the files of `OUTPUT_FILES`, and only if they do not exist or are listed
    in the manifest (it wrote them): every name is claimed in the manifest before it is written.
    """

    def __init__(self, out: str, owned: set[str]):
        self.out, self.owned = out, set(owned)

    def claim(self, *names: str) -> None:
        new = [n for n in names if n not in self.owned]
        if not new:
            return
        foreign = [n for n in new if os.path.lexists(os.path.join(self.out, n))]
        if foreign:
            raise InputError(f"output_dir {self.out!r} now holds {', '.join(foreign)}, which this run did not write; "
                             "it was not overwritten")
        self.owned.update(new)
        _write_json(os.path.join(self.out, MANIFEST),
                    {"format": "nlxc-run-manifest", "files": sorted(self.owned)})


def _read_manifest(out: str) -> set[str] | None:
    path = os.path.join(out, MANIFEST)
    if not os.path.lexists(path):
        return None
    meta = _read_json(path, "run manifest")
    if not (isinstance(meta, dict) and meta.get("format") == "nlxc-run-manifest" and isinstance(meta.get("files"), list)
            and all(isinstance(n, str) for n in meta["files"])):
        raise InputError(f"{path} is not a run manifest of nlxc train; choose another [run] output_dir "
                         "(nothing was written)")
    return set(meta["files"])


@dataclasses.dataclass
class _Resume:
    meta: dict  # last.json
    data: bytes  # last.eqx, verified


def _check_output_dir(config: TrainConfig) -> tuple[str, _Resume | None, set[str]]:
    """Before any work: the run directory, the verified checkpoint to resume from (or `None`),
    and the files of the directory this run owns.

    **Raises:** [`nlxc.InputError`][] if the directory holds a run of another configuration, a
    corrupt checkpoint, or files this run would write but did not write (e.g. the user's own
    `results.md`): nothing is ever overwritten that `train` did not write."""
    out = config.run.output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"output_dir {out!r} exists and is not a directory")
    if not os.path.isdir(out):
        return out, None, set()
    manifest = _read_manifest(out)
    last = os.path.join(out, "last.eqx")
    resume, previous = None, None
    if os.path.isfile(os.path.join(out, "last.json")):
        if not os.path.isfile(last):
            raise InputError(f"output_dir {out!r} holds last.json but not its checkpoint last.eqx; "
                             "choose another [run] output_dir (nothing was written)")
        meta = _read_sidecar(last)
        previous = _sidecar_config(last, meta)
        resume = _Resume(meta, b"")
    elif manifest is not None and "config.json" in manifest and os.path.isfile(os.path.join(out, "config.json")):
        # a run of ours that stopped before its first checkpoint: the same config starts it again
        path = os.path.join(out, "config.json")
        try:
            previous = TrainConfig.from_dict(_read_json(path, "run config"), written=True)
        except ConfigError as err:
            raise InputError(f"{path}: {err}") from None
    if previous is not None:
        changed = config.differences(previous)
        if changed:
            raise InputError(f"output_dir {out!r} holds a run with a different config ({', '.join(changed)} differ); "
                             "choose another [run] output_dir (nothing is overwritten)")
    if manifest is None and resume is not None:
        # a run of an nlxc before the manifest: the files of a resumable run of this config are its own
        manifest = {n for n in OUTPUT_FILES if os.path.lexists(os.path.join(out, n))}
    owned = manifest or set()
    foreign = sorted(n for n in OUTPUT_FILES if os.path.lexists(os.path.join(out, n)) and n not in owned)
    if foreign:
        raise InputError(f"output_dir {out!r} already holds {', '.join(foreign)}, which this run would write but did "
                         "not write; move them or choose another [run] output_dir (nothing was written)")
    if resume is not None:
        resume.data = _read_checkpoint(last, resume.meta)
        if "format" not in resume.meta:
            warnings.warn(f"checkpoint {last} was written by an older nlxc without a checksum; it is resumed "
                          "unverified", stacklevel=3)
    return out, resume, owned


def _resume_state(out: str, resume: _Resume, like: TrainState) -> TrainState:
    """The TrainState of a verified `last.eqx` (format 2: the state itself; the old format: the
    tuple `(params, opt_state, guesses, best_params)` with the counters in `last.json`)."""
    path = os.path.join(out, "last.eqx")
    meta = resume.meta
    try:
        if "format" in meta:
            state = eqx.tree_deserialise_leaves(io.BytesIO(resume.data), like)
        else:
            params, opt_state, guesses, best = eqx.tree_deserialise_leaves(
                io.BytesIO(resume.data), (like.params, like.opt_state, like.guesses, like.params))
            state = TrainState(params, opt_state, guesses, best,
                               **_counters(meta["step"], meta["best_step"], meta["best_value"], meta["since_best"], 0,
                                           meta["wall_s"]))
    except Exception as err:  # noqa: BLE001 — any unreadable content, reported as one line
        raise InputError(f"checkpoint {path} does not hold a training state of this config's model and data: "
                         f"{' '.join(str(err).split())[:200] or type(err).__name__}; choose another [run] "
                         "output_dir") from None
    return jax.device_get(state)


def _metrics_before(path: str, start: int) -> bytes:
    """The lines of `metrics.jsonl` before step `start` (a last line cut short by a kill is
    dropped; any other unreadable line is an InputError)."""
    if not os.path.isfile(path):
        return b""
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    kept = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            step = json.loads(line.decode("utf-8"))["step"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            if i == len(lines) - 1:
                break
            raise InputError(f"{path} line {i + 1} is not a metrics record (corrupt file); "
                             "choose another [run] output_dir") from None
        if isinstance(step, int) and step < start:
            kept.append(line + b"\n")
    return b"".join(kept)


def _failure_reason(code: int, prepared: _Prepared, converged: dict[str, bool]) -> str:
    parts = []
    if code & _LOSS_NOT_FINITE:
        parts.append("training loss not finite")
    if code & _GRADIENT_NOT_FINITE:
        parts.append("gradient not finite (or its adjoint solve failed)")
    if code & _SCF_FAILED:
        names = sorted(n for n, ok in converged.items() if not ok and prepared.split_of[n] in ("train", "shared"))
        parts.append(f"SCF not converged for {', '.join(names)}")
    if code & _UPDATE_NOT_FINITE:
        parts.append("update not finite")
    return "; ".join(parts)


class _InterruptGuard:
    """While `train` runs, Ctrl-C raises `KeyboardInterrupt` as usual, and raises it again every
    0.5 s until `train` has handled it.

    Python runs a SIGINT handler wherever the main thread is; when that is a garbage-collector
    or finaliser callback (JAX runs one at every collection), the `KeyboardInterrupt` is printed
    as "Exception ignored in ..." and lost, and the run would go on. Installed only in the main
    thread and only over Python's default handler (an application's own handler, or an ignored
    SIGINT, is left alone).
    """

    def __enter__(self):
        self.handled = threading.Event()
        self.resent = 0
        self.watchdog = None
        self.deferring = False
        self.deferred_interrupt = False
        self.installed = (threading.current_thread() is threading.main_thread()
                          and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self.installed:
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.handled.is_set() and self.resent > 0:
            self.resent -= 1  # a repetition that crossed `handle()`: the interruption is being handled
            return
        if self.watchdog is None and not self.handled.is_set():
            self.watchdog = threading.Thread(target=self._repeat, name="nlxc-interrupt", daemon=True)
            self.watchdog.start()
        if self.deferring:
            self.deferred_interrupt = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """A block that Ctrl-C does not split: an interruption inside it is raised when it ends."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.deferred_interrupt:
            self.deferred_interrupt = False
            raise KeyboardInterrupt

    def _repeat(self):
        main = threading.main_thread().ident
        while not self.handled.wait(0.5):
            self.resent += 1
            signal.pthread_kill(main, signal.SIGINT)

    def handle(self) -> None:
        """The interruption has reached `train`'s handler: stop repeating it."""
        self.handled.set()

    def __exit__(self, *exc):
        self.handled.set()
        if self.watchdog is not None:
            # a repetition it sent just before `handled` was set must reach `_handler` (which
            # drops it), not the caller's code after `train` returns: `signal.signal` runs the
            # pending handlers before it swaps them
            self.watchdog.join()
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        return False


def train(config: TrainConfig | str | os.PathLike, *,
          callback: Callable[[int, dict], None] | None = None, evaluate: bool = True) -> TrainResult:
    """Train the functional of `config` through the SCF (see the module docstring).

    **Arguments:**

    - `config`: a [`TrainConfig`][nlxc.train.TrainConfig] or the path of a TOML/YAML file.
    - `callback`: called as `callback(step, metrics)` after every step (e.g. to stop a run by
      raising `KeyboardInterrupt`, which checkpoints first).
    - `evaluate`: at the end, evaluate the best functional on the test split beside the
      PySCF baselines of `[evaluation]` (written to `results.json` / `results.md` and printed).

    **Returns:** a [`TrainResult`][nlxc.train.TrainResult].

    **Raises:** [`ConfigError`][nlxc.train.ConfigError] for a bad configuration;
    [`nlxc.InputError`][] before any work if `output_dir` holds a run of a different config, a
    corrupt checkpoint, or files this run would write but did not write;
    [`TrainingError`][nlxc.train.TrainingError] after `[training] max_failed_steps`
    consecutive failed steps (the last good state checkpointed);
    `nlxc.train.TrainingInterrupted` (a `KeyboardInterrupt`) after
    writing a checkpoint of the last completed step (none before the first step).
    """
    if not isinstance(config, TrainConfig):
        config = load_config(config)
    out, resume, owned = _check_output_dir(config)
    with _InterruptGuard() as guard:
        try:
            return _train(config, out, resume, owned, guard, callback, evaluate)
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            # before the training loop (building the Systems) or after it (evaluation): the
            # checkpoint, if any, is complete; JAX may be compiling in its own threads
            guard.handle()
            last, step = os.path.join(out, "last.eqx"), None
            if os.path.isfile(last):
                try:
                    step = int(_read_sidecar(last)["step"])
                except (InputError, KeyError, TypeError, ValueError):
                    step = None
            if step is not None:
                message = f"interrupted: checkpoint at step {step} in {out}; run the same config again to resume"
            else:
                message = f"interrupted: no checkpoint in {out}; run the same config again to start"
            print(message)
            raise TrainingInterrupted(message, checkpoint=last if step is not None else None, step=step,
                                      pending=True) from None


def _train(config: TrainConfig, out: str, resume: _Resume | None, owned: set[str], guard: _InterruptGuard,
           callback, evaluate: bool) -> TrainResult:
    functional, trainable = build_functional(config.model, config.run.seed)
    prepared = _prepare(config, functional)  # before creating output_dir: bad data leaves nothing behind
    os.makedirs(out, exist_ok=True)
    outputs = _Outputs(out, owned)
    outputs.claim("config.json", "metrics.jsonl")
    _write_json(os.path.join(out, "config.json"), config.to_dict())

    steps = config.training.steps
    optimizer = build_optimizer(config.optimizer, steps)
    params, static = eqx.partition(functional, trainable)
    loss_spec = LossSpec.from_config(config.loss)
    max_scf = config.training.max_scf_steps
    state = jax.device_get(TrainState(params, init_optimizer_state(optimizer, params, static, prepared.data, loss_spec,
                                                                   max_scf),
                                      _initial_guesses(prepared.data), params, **_counters(0, 0, math.inf, 0, 0, 0.0)))
    metrics_path = os.path.join(out, "metrics.jsonl")
    if resume is not None:
        state = _resume_state(out, resume, state)
        _write_bytes(metrics_path, _metrics_before(metrics_path, int(state.step)))
        print(f"resuming {out} from step {int(state.step)}")
    elif os.path.isfile(metrics_path):
        os.remove(metrics_path)  # ours (claimed above), of a run of this config stopped before its first checkpoint
    max_failed = config.training.max_failed_steps
    if int(state.failures) >= max_failed:
        raise TrainingError(f"the run in {out} stopped after {int(state.failures)} consecutive failed steps before "
                            f"step {int(state.step)} (reasons in metrics.jsonl); its last.eqx holds the parameters "
                            "before them; change the config (e.g. [optimizer] learning_rate) and train in another "
                            "[run] output_dir")

    has_validation = any(v == "validation" for v in prepared.split_of.values())
    monitor = 1 if has_validation else 0
    t_start = time.perf_counter()
    wall0 = float(state.wall_s)
    start = int(state.step)
    saved = {"step": start if resume is not None else None}  # the step of the checkpoint on disk
    progress = None
    if config.training.progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=steps, initial=min(start, steps), desc=f"training {config.run.name}", unit="step")

    def checkpoint(s: TrainState) -> None:
        outputs.claim("last.eqx", "last.json")
        _save_state(out, config, s)
        saved["step"] = int(s.step)

    def args(s: TrainState, guesses=None):
        carry = _Carry(s.params, s.opt_state, s.guesses if guesses is None else guesses)
        return carry, static, prepared.data, optimizer, loss_spec, config.training.max_scf_steps

    last_step = None  # (energies, converged, input guesses) of the last step taken
    initial_energies = None
    pending = False  # XLA may be compiling or running a step
    try:
        while True:
            step = int(state.step)
            pending = True
            try:
                o = _run_step(*args(state))
            except _StepRaised as err:
                pending = False
                if saved["step"] != step:
                    checkpoint(state)
                raise TrainingError(f"step {step} raised: {err}; the last good state (step {step}) is in "
                                    f"{os.path.join(out, 'last.eqx')}") from None
            pending = False
            ok, code = bool(o.ok), int(o.failure)
            totals = np.asarray(o.losses)
            e, c = _energies_by_name(prepared, o.energies, o.converged)
            if step == 0:
                initial_energies = e
            stats = _split_stats(prepared, e)
            value = float(totals[monitor])
            best = {"best_params": state.best_params, "best_step": int(state.best_step),
                    "best_value": float(state.best_value), "since_best": int(state.since_best) + 1}
            if ok and value < best["best_value"]:
                best.update(best_params=o.evaluated, best_step=step, best_value=value, since_best=0)
            failures = 0 if ok else int(state.failures) + 1
            record = {"step": step, "ok": ok}
            if not ok:
                record["reason"] = _failure_reason(code, prepared, c)
            if config.optimizer.least_squares:
                record["accepted"] = bool(o.accepted)
            record.update({
                "loss": {s: float(v) for s, v in zip(SPLITS, totals)},
                "terms": {t: [float(x) for x in np.asarray(v)] for t, v in o.terms.items()},
                "mae_kcal": {s: {k: stats[s][k]["mae"] for k in stats[s]} for s in SPLITS},
                "grad_norm": float(o.grad_norm),
                "not_converged": sorted(n for n, conv in c.items() if not conv),
                "wall_s": wall0 + time.perf_counter() - t_start,
            })
            counters = {**{k: v for k, v in best.items() if k != "best_params"}, "failures": failures,
                        "wall_s": wall0 + time.perf_counter() - t_start}
            finished = (step >= steps or (config.training.patience and best["since_best"] >= config.training.patience)
                        or bool(o.done))
            if finished:
                following = dataclasses.replace(state, best_params=best["best_params"],
                                                **_counters(step=step, **counters))
            else:
                following = TrainState(o.carry.params, o.carry.opt_state, o.carry.guesses, best["best_params"],
                                       **_counters(step=step + 1, **counters))
            last_step = (e, c, state.guesses)
            # the metrics line and the state it describes change together: a Ctrl-C between the
            # two is raised after both, so the checkpoint written then has every step's line
            with guard.deferred():
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                state = following
            if progress is not None and step > start:
                progress.update(1)
            if progress is not None:
                progress.set_postfix(loss=f"{totals[0]:.3g}", val=f"{totals[1]:.3g}", refresh=False)
            if finished:
                break
            if failures >= max_failed:
                checkpoint(state)
                raise TrainingError(f"{failures} consecutive failed steps ({step - failures + 1} to {step}; the last: "
                                    f"{record['reason']}); the parameters before them are checkpointed in "
                                    f"{os.path.join(out, 'last.eqx')} (see metrics.jsonl)")
            if int(state.step) % config.training.checkpoint_every == 0:
                checkpoint(state)
            if callback is not None:
                callback(int(state.step), record)
    except KeyboardInterrupt:
        guard.handle()
        if progress is not None:
            progress.close()
        try:
            if int(state.step) != (saved["step"] if saved["step"] is not None else 0):
                checkpoint(state)  # host arrays only: safe while XLA still works in its own threads
        except KeyboardInterrupt:
            pass  # a second Ctrl-C while writing: the previous checkpoint is intact (atomic writes)
        where = os.path.join(out, "last.eqx")
        if saved["step"] is not None and os.path.isfile(where):
            message = (f"interrupted: checkpoint at step {saved['step']} in {out}; run the same config again to "
                       "resume")
        else:
            where = None
            message = f"interrupted before the first step: no checkpoint in {out}; run the same config again to start"
        print(message)
        raise TrainingInterrupted(message, checkpoint=where, step=saved["step"] if where else None,
                                  pending=pending) from None
    if progress is not None:
        progress.close()
    checkpoint(state)
    steps_done = int(state.step)
    final_functional = eqx.combine(jax.tree.map(jnp.asarray, state.params), static)
    best_params = state.best_params
    best_functional = eqx.combine(jax.tree.map(jnp.asarray, best_params), static)
    done = {"best_step": int(state.best_step), "best_value": float(state.best_value), "steps": steps_done}
    outputs.claim("best.eqx", "best.json", "final.eqx", "final.json")
    _save_functional(os.path.join(out, "best.eqx"), config, best_functional, done)
    _save_functional(os.path.join(out, "final.eqx"), config, final_functional, done)

    results = None
    if evaluate:
        if int(state.best_step) == steps_done:
            best_energies, best_converged = last_step[0], last_step[1]
        else:
            fresh = jax.device_get(init_optimizer_state(optimizer, best_params, static, prepared.data, loss_spec,
                                                        max_scf))
            try:
                o = _run_step(*args(dataclasses.replace(state, params=best_params, opt_state=fresh),
                                    guesses=last_step[2]))
            except _StepRaised as err:
                raise TrainingError(f"evaluating the best parameters raised: {err}; they are in "
                                    f"{os.path.join(out, 'best.eqx')}") from None
            best_energies, best_converged = _energies_by_name(prepared, o.energies, o.converged)
        outputs.claim("results.json", "results.md", "parity.png", "baselines.h5")
        results = _held_out_report(config, prepared, best_energies, best_converged, initial_energies, out)
    if config.training.plots:
        outputs.claim("learning_curve.png")
        plot_learning_curve(metrics_path, os.path.join(out, "learning_curve.png"))
    return TrainResult(best_functional, final_functional, int(state.best_step), steps_done, out, results)
