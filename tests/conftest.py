"""Shared pytest set-up: quiet TensorFlow, tf_keras everywhere, seeded runs."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf

from mntk.compat import keras

# Two logical CPU devices, so MirroredStrategy tests get two replicas. This has
# to happen before TensorFlow initializes its devices, i.e. at collection time.
_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # already initialized by an earlier import
    pass


@pytest.fixture(autouse=True)
def _seed_and_clear():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield


# MirroredStrategy over the two logical CPUs reduces through one device instead
# of collective ops: each new strategy restarts the collective instance keys,
# and a key reused by a later strategy in this process aborts its all-reduce
# ("Shape mismatch in the collective instance"). The replicas still train on
# their own halves of the batch and sum their gradients.
_NewMirroredStrategy = tf.distribute.MirroredStrategy


class _MirroredStrategy(_NewMirroredStrategy):
    def __init__(self, devices=None, cross_device_ops=None):
        super().__init__(devices=devices, cross_device_ops=(
            cross_device_ops or tf.distribute.ReductionToOneDevice()))


tf.distribute.MirroredStrategy = _MirroredStrategy
