"""The resumable state of a run and its checkpoints: atomic writes, SHA-256 verified on every read."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
import warnings
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._config import (
    ConfigError,
    TrainConfig,
)
from .._errors import InputError
from ..xc import AbstractFunctional
from ._build import build_functional
from ._common import TrainingError

# --------------------------------------------------------------------------------------------
# Training state and checkpoints
# --------------------------------------------------------------------------------------------


class TrainState(eqx.Module):
    """The resumable state of a run: what `last.eqx` holds (`eqx.tree_serialise_leaves`).

    - `params`: the trainable leaves of the functional (`eqx.partition` by `trainable`) at `step`.
    - `opt_state`: the optax state; `guesses`: per batch, the SCF starting density matrices.
    - `best_params`: the parameters with the lowest monitored loss so far, from step `best_step`
      (loss `best_value`); `since_best`: steps since then.
    - `step`: the next step to take; `failures`: consecutive failed steps just before it;
      `wall_s`: training time so far.

    The counters are 0-d numpy arrays (they are written with `np.save`, without XLA).
    """

    params: Any
    opt_state: Any
    guesses: list
    best_params: Any
    step: np.ndarray
    best_step: np.ndarray
    best_value: np.ndarray
    since_best: np.ndarray
    failures: np.ndarray
    wall_s: np.ndarray


def _counters(step, best_step, best_value, since_best, failures, wall_s) -> dict:
    return {"step": np.asarray(step, np.int64), "best_step": np.asarray(best_step, np.int64),
            "best_value": np.asarray(best_value, np.float64), "since_best": np.asarray(since_best, np.int64),
            "failures": np.asarray(failures, np.int64), "wall_s": np.asarray(wall_s, np.float64)}


CHECKPOINT_FORMAT = "nlxc-checkpoint"
CHECKPOINT_VERSION = 2
MANIFEST = "manifest.json"
# Every file `train` may write in output_dir (besides MANIFEST and its hidden temporary files).
OUTPUT_FILES = ("config.json", "metrics.jsonl", "last.eqx", "last.json", "best.eqx", "best.json", "final.eqx",
                "final.json", "results.json", "results.md", "learning_curve.png", "parity.png", "baselines.h5")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_bytes(path: str, data: bytes) -> None:
    """Write `data` to a hidden temporary file beside `path`, fsync it, and rename it to `path`
    (atomic: a kill at any moment leaves the old file or the new one)."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_json(path: str, obj) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _read_json(path: str, what: str):
    """The JSON content of `path`, or InputError naming it (unreadable, not UTF-8, not JSON)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise InputError(f"cannot read {what} {path}: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text (corrupt file)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{what} {path} is not valid JSON (truncated or corrupt: {err.msg} at line "
                         f"{err.lineno})") from None


def _sidecar_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def _read_sidecar(path: str) -> dict:
    """The sidecar of checkpoint `path` (its config and, since format 2, the SHA-256 of its bytes)."""
    sidecar = _sidecar_path(path)
    meta = _read_json(sidecar, "checkpoint sidecar")
    if not isinstance(meta, dict) or "config" not in meta:
        raise InputError(f"checkpoint sidecar {sidecar} holds no config (not written by nlxc train)")
    version = meta.get("format_version")
    if meta.get("format", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT or (
            version is not None and (not isinstance(version, int) or version > CHECKPOINT_VERSION)):
        raise InputError(f"checkpoint sidecar {sidecar} has format {meta.get('format')!r} version {version!r}; "
                         f"this nlxc reads {CHECKPOINT_FORMAT!r} up to version {CHECKPOINT_VERSION} (upgrade nlxc)")
    return meta


def _sidecar_config(path: str, meta: dict) -> TrainConfig:
    try:
        return TrainConfig.from_dict(meta["config"], written=True)
    except ConfigError as err:
        raise InputError(f"checkpoint sidecar {_sidecar_path(path)}: {err}") from None


def _read_checkpoint(path: str, meta: dict) -> bytes:
    """The bytes of checkpoint `path`, verified against the SHA-256 of its sidecar `meta`.

    A sidecar is written before its checkpoint and names the checkpoint's previous digest too,
    so a kill between the two renames leaves the previous, complete checkpoint, which is
    accepted. A sidecar of the old format (no `format`) has no digest: the bytes are returned
    unverified (the caller warns)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise InputError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if "format" not in meta:
        return data
    digest = _sha256(data)
    if digest != meta.get("sha256") and digest != meta.get("previous_sha256"):
        raise InputError(f"checkpoint {path} does not match the SHA-256 in {os.path.basename(_sidecar_path(path))} "
                         "(corrupt, truncated or modified); it was not loaded")
    return data


def _write_checkpoint(path: str, tree, sidecar: dict) -> None:
    """`tree` (numpy leaves) to `path` with its sidecar: sidecar first (new and previous digest),
    then the checkpoint, each atomically."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    data = buffer.getvalue()
    previous = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            previous = _sha256(f.read())
    _write_json(_sidecar_path(path), {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **sidecar,
                                      "sha256": _sha256(data), "previous_sha256": previous})
    _write_bytes(path, data)


def _save_state(out: str, config: TrainConfig, state: TrainState) -> None:
    """`last.eqx`/`last.json`. `state` must be on the host (numpy), so that an interruption can
    write it while XLA still compiles or runs a step in its own threads."""
    if not (all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))
            and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.best_params))):
        raise TrainingError(f"refusing to checkpoint non-finite parameters at step {int(state.step)}; "
                            f"{out}/last.eqx keeps the last good state")  # pragma: no cover (the step rejects them)
    info = {k: (float(v) if k in ("best_value", "wall_s") else int(v))
            for k, v in _counters(state.step, state.best_step, state.best_value, state.since_best, state.failures,
                                  state.wall_s).items()}
    _write_checkpoint(os.path.join(out, "last.eqx"), state, {"kind": "state", "config": config.to_dict(), **info})


def _save_functional(path: str, config: TrainConfig, functional, meta: dict) -> None:
    _write_checkpoint(path, jax.device_get(functional), {"kind": "functional", "config": config.to_dict(), **meta})


def load_checkpoint(path: str | os.PathLike) -> tuple[AbstractFunctional, TrainConfig]:
    """The trained functional of a checkpoint written by [`train`][nlxc.train.train].

    **Arguments:** `path`, a functional checkpoint (`best.eqx`, or `final.eqx`) or a run
    directory (then its `best.eqx`). Its JSON sidecar (same name, `.json`) holds the config and
    the SHA-256 of the checkpoint's bytes, which is verified. (Checkpoints of nlxc versions
    before the checksums load unverified, with a warning.)

    **Returns:** `(functional, config)`: the functional with the trained parameters, and the
    [`TrainConfig`][nlxc.train.TrainConfig] of the run (its `[data]` names the basis and grid).

    **Raises:** [`nlxc.InputError`][] (one line, naming the file) for a missing file or
    sidecar, a sidecar that is not UTF-8 JSON (truncated) or holds no valid config, a
    checkpoint that does not match its SHA-256 (corrupt or modified), a resumable state
    (`last.eqx`) instead of a functional, or a file that does not hold parameters of the
    functional the config describes.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "best.eqx")
    sidecar = _sidecar_path(path)
    if not os.path.isfile(path):
        raise InputError(f"checkpoint {path!r} does not exist")
    if not os.path.isfile(sidecar):
        raise InputError(f"checkpoint {path!r} has no {os.path.basename(sidecar)} beside it (its config)")
    meta = _read_sidecar(path)
    if meta.get("kind") == "state":
        raise InputError(f"checkpoint {path!r} is the resumable training state of a run, not a functional; "
                         "load its best.eqx or final.eqx")
    config = _sidecar_config(path, meta)
    data = _read_checkpoint(path, meta)
    if "format" not in meta:
        warnings.warn(f"checkpoint {path} was written by an older nlxc without a checksum; it is loaded unverified",
                      stacklevel=2)
    like, _ = build_functional(config.model, config.run.seed)
    try:
        functional = eqx.tree_deserialise_leaves(io.BytesIO(data), like)
    except Exception as err:  # noqa: BLE001 — any unreadable content, reported as one line
        raise InputError(f"checkpoint {path!r} does not match the functional of its config: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from None
    return functional, config
