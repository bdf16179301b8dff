"""Names shared by the trainer's modules: the splits and the trainer's exceptions."""

from __future__ import annotations

SPLITS = ("train", "validation", "test")
"""The three splits of a run's molecules, in the order of their rows in the step's losses."""

CONSTRAINED_META_GGA = "ConstrainedMetaGGA"


class TrainingError(RuntimeError):
    """Training cannot go on: `[training] max_failed_steps` consecutive steps failed (non-finite
    loss, gradient or update, or a training molecule's SCF failed), or the compiled step raised.
    The message is one line; the last good state is checkpointed in `last.eqx`."""


class TrainingInterrupted(KeyboardInterrupt):
    """A `KeyboardInterrupt` (Ctrl-C, or raised by a `callback`) that stopped [`train`][nlxc.train.train].

    **Attributes:** `checkpoint`: the path of `last.eqx` if the run has a resumable checkpoint
    (written on the interruption, or earlier), else `None`; `step`: the step it resumes at
    (`None` without a checkpoint);
    `pending`: whether XLA may still be compiling or running the interrupted step in its own
    threads. A process that is about to exit should then leave with `os._exit` (as `nlxc train`
    does): Python's normal shutdown would wait for those threads and can crash in them.
    """

    def __init__(self, message: str, *, checkpoint: str | None, step: int | None, pending: bool):
        super().__init__(message)
        self.checkpoint, self.step, self.pending = checkpoint, step, pending
