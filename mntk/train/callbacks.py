"""The callbacks every resumable fit of the runner adds.

- ``EpochSeededRandomness``: dropout & co. re-seeded from ``(seed, epoch)``;
- ``StateBackup``: variables outside the model (SRIP's power-iteration
  vectors, its coefficient; global pruning's masks and rewind state)
  checkpointed next to ``BackupAndRestore``'s;
- ``TechniqueLogger``: sparsity and mean weight bits in the epoch logs;
- ``DivergenceGuard``: a NaN/Inf loss, metric, weight or output ends the fit.
"""
import math
import os
import shutil

import numpy as np
import tensorflow as tf

from mntk import pruning, quantization
from mntk.compat import keras
from mntk.train.errors import DivergedError, RecipeError
from mntk.wrapped import is_pruned, is_quantized


class EpochSeededRandomness(keras.callbacks.Callback):
    """Re-seeds every layer's random generator (dropout & co.) per epoch.

    The generator state of Keras layers is not part of ``BackupAndRestore``'s
    checkpoint; seeding it from ``(seed, epoch)`` makes epoch ``e`` draw the
    same masks whether or not the run was resumed, like the epoch-keyed data.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model._flatten_layers(include_self=False):
            generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
            if generator is not None:
                generator.reset_from_seed(self.seed * 100003 + int(epoch))


class StateBackup(keras.callbacks.Callback):
    """Checkpoints variables that live outside the model (SRIP's power-iteration
    vectors and coefficient, global pruning's masks, stage counter, rewind
    snapshot and best metric) next to ``BackupAndRestore``'s checkpoint: saved
    at each epoch end, restored when training starts again.

    Like ``BackupAndRestore`` under a multi-worker strategy, every worker saves
    (reading a replica-synced variable is a collective all of them must join),
    the others into a private folder, and all restore from the chief's.
    """

    def __init__(self, variables, directory: str, chief: bool = True, worker: str = "",
                 resume_epoch: int = 0):
        super().__init__()
        self.directory = directory
        self.write_dir = directory if chief else f"{directory}_{worker or 'worker'}"
        self.resume_epoch = int(resume_epoch)
        self.checkpoint = tf.train.Checkpoint(state=list(variables))
        # two kept: a run killed between this save and BackupAndRestore's
        # resumes at the epoch before, whose state must still be here
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=2)

    def on_train_begin(self, logs=None):
        """Restore the state saved at the end of the epoch ``BackupAndRestore``
        resumes after (``resume_epoch`` epochs done), not simply the latest."""
        if self.resume_epoch <= 0:
            return
        path = os.path.join(self.directory, f"ckpt-{self.resume_epoch - 1}")
        if tf.io.gfile.exists(path + ".index"):
            try:
                self.checkpoint.restore(path).assert_consumed()
            except Exception as e:
                raise backup_error(self.directory, e) from None

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch)
    # kept after the fit, like BackupAndRestore's: the stage's figures are
    # still to come; the runner removes both once the stage is marked done


def backup_error(directory: str, error: BaseException) -> RecipeError:
    """A backup that cannot be restored (corrupt, or from another model)."""
    stage_dir = os.path.dirname(os.path.normpath(directory))
    rel = os.path.join("stages", os.path.basename(stage_dir), os.path.basename(directory))
    detail = " ".join(str(error).split())[:160] or type(error).__name__
    return RecipeError(f"the backup {rel} cannot be restored ({type(error).__name__}: "
                       f"{detail}); remove {rel} to restart that stage")


class CheckedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose failure to restore names the fix, and whose
    backup outlives the fit: a run killed after the fit but before its stage
    is marked done resumes at the last epoch instead of training the stage
    again (the runner removes the backup once the stage is done)."""

    def __init__(self, backup_dir, **kwargs):
        super().__init__(backup_dir, delete_checkpoint=False, **kwargs)

    def on_train_begin(self, logs=None):
        try:
            super().on_train_begin(logs)
        except Exception as e:
            raise backup_error(self.backup_dir, e) from None


class TechniqueLogger(keras.callbacks.Callback):
    """Adds ``sparsity`` (mean over pruned kernels) and ``mean_weight_bits`` of
    the model being trained to the epoch logs (History, CSV, TensorBoard)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if is_pruned(self.model):
            values = list(pruning.sparsity(self.model).values())
            logs["sparsity"] = float(np.mean(values)) if values else 0.0
        if is_quantized(self.model):
            logs["mean_weight_bits"] = float(quantization.mean_weight_bits(self.model))


def first_bad_weight(model):
    """``layer/weight`` name of the first weight holding NaN or Inf, else None."""
    for layer in model._flatten_layers(include_self=False):
        for weight in layer.weights:
            if not np.all(np.isfinite(weight.numpy())):
                return f"{layer.name}/{weight.name.split('/')[-1].split(':')[0]}"
    return None


class DivergenceGuard(keras.callbacks.Callback):
    """Ends a fit whose epoch ends diverged: a NaN/Inf loss or metric (the
    validation loss too), weight (e.g. a BatchNorm moving variance) or output
    on a validation batch. It raises ``DivergedError`` naming the stage, the
    epoch and the first bad metric or layer; listed before
    ``BackupAndRestore``, it fires before that epoch is backed up, so the
    backup keeps the last good epoch."""

    def __init__(self, stage: str, batch, hint: str):
        super().__init__()
        self.stage, self.batch, self.hint = stage, batch, hint

    def _fail(self, epoch, what):
        raise DivergedError(f"stage {self.stage!r} diverged at epoch {epoch}: {what}; "
                            f"{self.hint}")

    def on_epoch_end(self, epoch, logs=None):
        for key, value in sorted((logs or {}).items()):
            if isinstance(value, (int, float, np.floating)) and not math.isfinite(float(value)):
                self._fail(epoch, f"{key} is {float(value)}")
        bad = first_bad_weight(self.model)
        if bad is not None:
            self._fail(epoch, f"weight {bad} holds NaN/Inf")
        if self.batch is not None:
            outputs = self.model(self.batch, training=False)
            outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            for i, out in enumerate(outputs):
                if not np.all(np.isfinite(np.asarray(out))):
                    self._fail(epoch, f"output {i} of the model is NaN/Inf on validation data")


KILL_AT_ENV = "MNTK_TEST_KILL_AT"


class KillAt(keras.callbacks.Callback):
    """TEST ONLY: SIGKILLs this process at one exact point of a stage's fit, so
    ``tests/faults_test.py`` can check that a killed run resumes bit-exact.

    ``fit`` adds it, last of all callbacks, when the environment variable
    ``MNTK_TEST_KILL_AT`` is set, to one of (epochs and batches count from 0):

    - ``STAGE:EPOCH:BATCH``: after batch BATCH of epoch EPOCH (mid-epoch);
    - ``STAGE:EPOCH:end``: after epoch EPOCH ended (its backup written);
    - ``STAGE:train_end``: after the fit ended, before the stage is marked done
      (its backup holds the last epoch).

    Users have no reason to set it: it kills the run.
    """

    def __init__(self, spec: str, stage: str):
        super().__init__()
        parts = spec.split(":")
        ok = len(parts) == 2 and parts[1] == "train_end" or len(parts) == 3 and \
            parts[1].isdigit() and (parts[2].isdigit() or parts[2] == "end")
        if not ok:
            raise RecipeError(f"{KILL_AT_ENV}={spec!r} must be STAGE:EPOCH:BATCH, "
                              "STAGE:EPOCH:end or STAGE:train_end (a test-only setting)")
        self.armed = parts[0] == stage
        self.point = tuple(parts[1:])

    def _kill(self):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.armed and self.point == (str(self.epoch), str(batch)):
            self._kill()

    def on_epoch_end(self, epoch, logs=None):
        if self.armed and self.point == (str(epoch), "end"):
            self._kill()

    def on_train_end(self, logs=None):
        if self.armed and self.point == ("train_end",):
            self._kill()


def kill_at_callbacks(stage: str):
    """``[KillAt(...)]`` when ``MNTK_TEST_KILL_AT`` is set (tests only), else []."""
    spec = os.environ.get(KILL_AT_ENV)
    return [KillAt(spec, stage)] if spec else []


def remove_backups(stage_dir: str) -> None:
    """A finished stage's backups (``backup/``, ``backup_state*/``): nothing
    is left to resume."""
    if not os.path.isdir(stage_dir):
        return
    for entry in os.listdir(stage_dir):
        if entry == "backup" or entry.startswith("backup_state"):
            shutil.rmtree(os.path.join(stage_dir, entry), ignore_errors=True)
