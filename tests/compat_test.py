"""The one Keras import and the guard against Keras 3 objects."""
import os

import pytest

from mntk import compat
from mntk.compat import keras


def test_keras_is_tf_keras_and_legacy_flag_is_set():
    assert keras.__name__.startswith("tf_keras")
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    import tensorflow as tf
    # TensorFlow's own keras attribute resolves to the same Keras 2
    assert tf.keras.Model is keras.Model


@pytest.mark.parametrize("make", [
    lambda k: k.Sequential([k.Input((4,)), k.layers.Dense(2)]),
    lambda k: k.layers.Dense(3, name="head"),
])
def test_keras3_objects_are_refused_with_the_fix(make):
    import keras as keras3  # the real Keras 3 package, as a user might import it
    obj = make(keras3)
    assert compat.is_keras3_object(obj)
    with pytest.raises(TypeError) as err:
        compat.ensure_tf_keras(obj)
    message = str(err.value)
    assert type(obj).__name__ in message
    assert "from mntk.compat import keras" in message


def test_tf_keras_objects_pass_through_unchanged():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert compat.ensure_tf_keras(model) is model
    assert not compat.is_keras3_object(model)


def test_non_keras_objects_are_refused():
    with pytest.raises(TypeError, match="expected a Keras model"):
        compat.ensure_tf_keras(object())


def test_public_entry_points_refuse_keras3_models():
    import keras as keras3
    import mntk
    model = keras3.Sequential([keras3.Input((8, 8, 1)), keras3.layers.Conv2D(2, 3),
                               keras3.layers.Flatten(), keras3.layers.Dense(2)])
    for call in (lambda: mntk.cost.estimate(model),
                 lambda: mntk.regularizers.apply_srip(model, 1e-2, layers="all"),
                 lambda: mntk.quantization.quantize(model),
                 lambda: mntk.early_exit.add_exits(model, at=["conv2d"])):
        with pytest.raises(TypeError, match="from mntk.compat import keras"):
            call()


_PROBE = """
import sys, importlib
import mntk.pruning, mntk.quantization
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
guarded = (prune_registry.base_layer, "keras.src.layers" in sys.modules)
for name in ("keras.engine", "keras.src.engine"):
    del sys.modules[name]
importlib.reload(prune_registry)       # tfmot's own probe, unguarded
print(guarded, (prune_registry.base_layer, "keras.src.layers" in sys.modules))
"""


@pytest.mark.slow
def test_tfmot_import_skips_keras3_with_the_same_outcome():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=True)
    # guarded: tfmot gets base_layer=None without importing Keras 3; unguarded,
    # its probe imports Keras 3 and still ends with base_layer=None
    assert out.stdout.split("\n")[-2] == "(None, False) (None, True)", out.stdout
