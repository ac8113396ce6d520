"""The callbacks every resumable fit of the runner adds.

- ``EpochSeededRandomness``: dropout & co. re-seeded from ``(seed, epoch)``;
- ``StateBackup``: variables outside the model (SRIP's power-iteration
  vectors, its coefficient) checkpointed next to ``BackupAndRestore``'s;
- ``TechniqueLogger``: sparsity and mean weight bits in the epoch logs.
"""
import os

import numpy as np
import tensorflow as tf

from mntk import pruning, quantization
from mntk.compat import keras
from mntk.train.saving import is_pruned, is_quantized


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
    vectors and coefficient) next to ``BackupAndRestore``'s checkpoint: saved
    at each epoch end, restored when training starts again.

    Like ``BackupAndRestore`` under a multi-worker strategy, every worker saves
    (reading a replica-synced variable is a collective all of them must join),
    the others into a private folder, and all restore from the chief's.
    """

    def __init__(self, variables, directory: str, chief: bool = True, worker: str = ""):
        super().__init__()
        self.directory = directory
        self.write_dir = directory if chief else f"{directory}_{worker or 'worker'}"
        self.checkpoint = tf.train.Checkpoint(state=list(variables))
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir, max_to_keep=1)

    def on_train_begin(self, logs=None):
        latest = tf.train.latest_checkpoint(self.directory)
        if latest:
            self.checkpoint.restore(latest).assert_consumed()

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=epoch)

    def on_train_end(self, logs=None):
        if os.path.isdir(self.write_dir):  # finished: nothing left to resume
            tf.io.gfile.rmtree(self.write_dir)


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
