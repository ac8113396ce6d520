"""mntk.load_model round-trips every quantization scheme (.h5 and .keras) with
identical outputs, and refuses code-carrying .h5 files unless safe_mode=False."""
import os

import numpy as np
import pytest

import mntk
import mntk.quantization as mq
from _quantization_helpers import compile_model, tiny_model
from _marks import fast_first


@pytest.mark.parametrize("scheme", fast_first(["learned", "ternary", "binary", "int8"]))
def test_quantized_model_saves_and_loads_with_same_outputs(scheme, tmp_path, digits_split):
    chosen = {"ternary": mq.TernaryScheme(), "binary": mq.BinaryScheme(),
              "learned": mq.LearnedPrecisionScheme(init_bits=4), "int8": "int8"}[scheme]
    x = digits_split[0][0][:64]
    q = compile_model(mq.quantize(tiny_model(), scheme=chosen))
    q(x, training=True)  # a training call sets the activation ranges
    # Move every trainable variable (kernels, TTQ scales, learned gamma and
    # ranges) off its initial value, so one the loader does not restore shows.
    rng = np.random.default_rng(0)
    for variable in q.trainable_weights:
        variable.assign(variable.numpy() * rng.uniform(0.8, 1.2, variable.shape))
    expected = q.predict(x, verbose=0)
    kernels = mq.quantized_weights(q)
    for suffix in ("h5", "keras"):
        path = tmp_path / f"q.{suffix}"
        q.save(path)
        loaded = mntk.load_model(path)
        np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected, err_msg=suffix)
        for name, kernel in kernels.items():
            np.testing.assert_array_equal(mq.quantized_weights(loaded)[name], kernel,
                                          err_msg=f"{name} ({suffix})")


def _lambda_model(marker):
    from mntk.compat import keras

    def payload(x):  # what a malicious file would do on load: write a file
        with open(marker, "w") as f:
            f.write("ran")
        return x

    inputs = keras.Input((4,))
    h = keras.layers.Lambda(payload, name="payload")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


def test_h5_with_code_is_refused_unless_safe_mode_is_off(tmp_path):
    marker = str(tmp_path / "marker.txt")
    model = _lambda_model(marker)
    path = str(tmp_path / "payload.h5")
    model.save(path)
    os.remove(marker)  # written while the model was built; gone before loading
    with pytest.raises(ValueError, match="'payload'.*safe_mode=False") as err:
        mntk.load_model(path)
    assert "\n" not in str(err.value)
    assert not os.path.exists(marker)
    mntk.load_model(path, safe_mode=False)  # trusted: the code runs
    assert os.path.exists(marker)


def test_keras_with_code_is_refused_too(tmp_path):
    marker = str(tmp_path / "marker.txt")
    path = str(tmp_path / "payload.keras")
    _lambda_model(marker).save(path)
    os.remove(marker)
    with pytest.raises(ValueError, match="safe_mode"):
        mntk.load_model(path)
    assert not os.path.exists(marker)


def test_h5_with_a_registered_activation_function_loads(tmp_path):
    # A prepared MobileNetV3 holds Activation(mntk hard_swish): tf_keras writes
    # the function into the .h5 config in its new format and cannot read it back.
    from mntk.compat import keras
    from mntk.prepare import hard_sigmoid, hard_swish
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, name="d1")(inputs)
    h = keras.layers.Activation(hard_swish, name="hs")(h)
    h = keras.layers.Dense(4, activation=hard_sigmoid, name="d2")(h)
    model = keras.Model(inputs, h)
    model.compile("adam", "mse")
    path = str(tmp_path / "hs.h5")
    model.save(path)
    with pytest.raises(TypeError, match="function"):  # tf_keras's own loader
        keras.models.load_model(path)
    before = open(path, "rb").read()
    loaded = mntk.load_model(path)
    assert open(path, "rb").read() == before  # the file is not rewritten
    x = np.random.default_rng(0).normal(0, 4, (32, 6)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # hard swish: x relu6(x + 3) / 6, computed here from the formula
    z = x @ model.get_layer("d1").kernel.numpy() + model.get_layer("d1").bias.numpy()
    hs = z * np.clip(z + 3, 0, 6) / 6
    np.testing.assert_allclose(loaded.get_layer("hs")(z).numpy(), hs, rtol=1e-6, atol=1e-6)
    assert loaded.get_layer("d2").activation is hard_sigmoid
