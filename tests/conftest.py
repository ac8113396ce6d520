"""Shared pytest set-up: quiet TensorFlow, tf_keras everywhere, seeded runs."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from mntk.compat import keras  # noqa: E402

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
