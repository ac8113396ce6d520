"""A full disk stops a run cleanly, in one line, resumable once space is freed.

Two parts:

- ``SpaceGuard`` (a callback, before the epoch's files) and ``check_space``
  (before a stage's model is saved) stop the run with a ``NoSpaceError``
  when the work directory's disk has less free space than the next writes
  need, estimated as ``3 x`` (model + optimizer variable bytes) ``+ 16 MiB``:
  the best weights, the backup written next to the previous one, and logs.
  Stopping *before* writing matters: h5py fails on a full disk with a
  traceback per open object and can crash the process.
- ``no_space_error``: a write that failed anyway (``ENOSPC`` from Python,
  TensorFlow or h5py) becomes the same one-line error.

Either way the stage's backup keeps the last finished epoch, so the same
command resumes from it once space is freed.
"""
import errno
import shutil
from typing import Optional

import numpy as np

from mntk.compat import keras
from mntk.train.errors import RecipeError

MARGIN = 16 << 20


class NoSpaceError(RecipeError):
    """The work directory's disk is full (or too full for the next writes)."""


def _fix(workdir: str) -> str:
    return (f"free space on the disk of {workdir} (or rerun with another --workdir), then "
            "rerun the same command to resume from the last finished epoch")


def variable_bytes(model) -> int:
    """Bytes of the model's and its optimizer's variables."""
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and hasattr(optimizer, "variables"):
        variables += list(optimizer.variables() if callable(optimizer.variables)
                          else optimizer.variables)
    return int(sum(np.prod(v.shape) * v.dtype.size for v in variables))


def check_space(directory: str, need: int, what: str, workdir: Optional[str] = None) -> None:
    """Raise ``NoSpaceError`` if ``directory``'s disk has under ``need`` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < need:
        raise NoSpaceError(
            f"the disk of {directory} has {free / 2**20:.1f} MiB free, under the "
            f"{need / 2**20:.1f} MiB {what} needs; {_fix(workdir or directory)}")


class SpaceGuard(keras.callbacks.Callback):
    """At each epoch end, before the epoch's files are written: enough space?"""

    def __init__(self, directory: str, workdir: str):
        super().__init__()
        self.directory, self.workdir = directory, workdir

    def on_epoch_end(self, epoch, logs=None):
        check_space(self.directory, 3 * variable_bytes(self.model) + MARGIN,
                    f"saving epoch {epoch}", self.workdir)


def is_no_space(error: BaseException) -> bool:
    """True if ``error`` or an exception it came from is a full disk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def no_space_error(workdir: str, error: BaseException) -> NoSpaceError:
    """The one-line error for a write that failed on a full disk."""
    where = getattr(error, "filename", None)
    where = f" writing {where}" if where else ""
    return NoSpaceError(f"no space left on the disk of {workdir}{where}; {_fix(workdir)}")
