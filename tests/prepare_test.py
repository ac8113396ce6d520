"""mntk.prepare: TF-op arithmetic to Keras layers, nested models flattened,
preprocessing found, softmax heads; outputs identical, the given model untouched."""
import numpy as np
import pytest
import tensorflow as tf

import mntk
from mntk import prepare as P
from mntk import softmax_heads
from mntk.compat import keras
from tf_keras.src.applications import mobilenet_v3 as keras_mnv3


def _snapshot(model):
    return ([w.copy() for w in model.get_weights()], [l.trainable for l in model.layers],
            len(model.losses), model.to_json(), [id(l) for l in model.layers])


def _assert_untouched(model, snapshot):
    weights, trainable, losses, config, ids = snapshot
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert [l.trainable for l in model.layers] == trainable
    assert len(model.losses) == losses
    assert model.to_json() == config
    assert [id(l) for l in model.layers] == ids


def hard_swish_net():
    """A MobileNetV3-style block built with keras.applications' own helpers
    (hard_swish/hard_sigmoid are TFOpLambda arithmetic there)."""
    x = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(x)
    h = keras_mnv3.hard_swish(h)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
    s = keras.layers.Conv2D(8, 1, name="se")(s)
    s = keras_mnv3.hard_sigmoid(s)
    h = keras.layers.Multiply(name="se_mul")([h, s])
    h = h * 0.5 + 1.0  # generic scalar arithmetic
    h = tf.nn.relu6(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(4, name="logits")(h), name="hsnet")


def test_tf_op_arithmetic_becomes_keras_layers_with_identical_outputs():
    model = hard_swish_net()
    before = _snapshot(model)
    assert any(type(l).__name__ == "TFOpLambda" for l in model.layers)
    new, report = P.rebuild(model)
    assert not any(type(l).__name__ == "TFOpLambda" for l in new.layers)
    kinds = [k for k, _ in report["converted"]]
    assert kinds.count("hard_swish") == 1 and kinds.count("hard_sigmoid") == 1
    assert kinds.count("Rescaling") == 2 and kinds.count("ReLU") == 1
    x = np.random.RandomState(0).randn(6, 8, 8, 3).astype("float32") * 4
    np.testing.assert_array_equal(new(x).numpy(), model(x).numpy())
    _assert_untouched(model, before)
    # The activation functions against numpy, from the MobileNetV3 paper.
    v = np.linspace(-5, 5, 41).astype("float32")
    relu6 = np.clip(v + 3, 0, 6)
    np.testing.assert_allclose(P.hard_swish(v).numpy(), v * relu6 / 6, rtol=1e-6)
    np.testing.assert_allclose(P.hard_sigmoid(v).numpy(), relu6 / 6, rtol=1e-6)


def test_prepared_model_saves_and_reloads(tmp_path):
    new = P.prepare(hard_swish_net())
    path = str(tmp_path / "m.keras")
    new.save(path)
    back = mntk.load_model(path)
    x = np.random.RandomState(1).randn(3, 8, 8, 3).astype("float32")
    np.testing.assert_array_equal(back(x).numpy(), new(x).numpy())


def test_nested_backbone_flattened_and_normalization_kept():
    rng = np.random.RandomState(0)
    inp = keras.Input((8, 8, 3), name="image")
    h = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(rng.rand(20, 8, 8, 3) * 3 + 1)
    h = norm(h)
    bb_in = keras.Input((8, 8, 3))
    b = keras.layers.Conv2D(8, 3, name="conv")(bb_in)  # name clashes with the head's
    b = keras.layers.ReLU(name="relu")(b)
    backbone = keras.Model(bb_in, b, name="backbone")
    h = backbone(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inp, keras.layers.Dense(5, name="conv")(h), name="outer")
    before = _snapshot(model)
    new, report = P.rebuild(model)
    assert report["flattened"] == ["backbone"]
    names = [l.name for l in new.layers]
    assert "conv" in names and "backbone_conv" in names and "relu" in names
    assert new.get_layer("conv").__class__ is keras.layers.Dense
    x = (rng.rand(4, 8, 8, 3) * 255).astype("float32")
    np.testing.assert_array_equal(new(x).numpy(), model(x).numpy())
    # The statistics live in the config now, so any clone keeps them.
    clone = keras.models.clone_model(new)
    clone.set_weights(new.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), model(x).numpy())
    assert P.preprocessing_layers(new) == ["scale", "norm"]
    _assert_untouched(model, before)


def test_unconvertible_op_is_one_line_error_naming_the_layer():
    x = keras.Input((4,))
    y = tf.math.reduce_max(x, axis=-1, keepdims=True)
    model = keras.Model(x, keras.layers.Dense(2)(y))
    with pytest.raises(P.PrepareError) as err:
        P.prepare(model)
    message = str(err.value)
    assert "\n" not in message and "tf.math.reduce_max" in message
    assert "Keras layer" in message
    with pytest.raises(ValueError, match="^quantize: .*reduce_max"):
        mntk.quantization.quantize(model)


@pytest.mark.parametrize("kind", ["activation", "dense", "conv1x1"])
def test_softmax_head_and_to_logits(kind):
    x = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(4, 3, name="body")(x)
    if kind == "conv1x1":  # MobileNetV3's head: 1x1 Conv2D -> Flatten -> softmax
        h = keras.layers.GlobalAveragePooling2D(keepdims=True)(h)
        h = keras.layers.Conv2D(3, 1, name="Logits")(h)
        h = keras.layers.Flatten()(h)
        out = keras.layers.Activation("softmax", name="Predictions")(h)
        classifier = "Logits"
    else:
        h = keras.layers.GlobalAveragePooling2D()(h)
        if kind == "dense":
            out = keras.layers.Dense(3, activation="softmax", name="predictions")(h)
        else:
            h = keras.layers.Dense(3, name="fc")(h)
            out = keras.layers.Softmax(name="probs")(h)
        classifier = "predictions" if kind == "dense" else "fc"
    model = keras.Model(x, out)
    softmax, found = softmax_heads.softmax_head(model)
    assert found.name == classifier
    logits_model = softmax_heads.to_logits(model)
    assert softmax_heads.softmax_head(logits_model) is None
    data = np.random.RandomState(2).randn(5, 6, 6, 2).astype("float32")
    logits = logits_model(data).numpy()
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, model(data).numpy(), rtol=1e-5, atol=1e-7)
    assert softmax_heads.softmax_head(model)[0] is softmax  # the model given is unchanged
