"""TTQ quantizer: values, gradient rules (numpy reference), config, cost protocol."""
import numpy as np
import pytest
import tensorflow as tf

from mntk.compat import keras
import mntk.quantization as mq


class _Holder(keras.layers.Layer):
    """Stand-in for a QuantizeWrapper: owns the quantizer variables."""


def _build(quantizer, w):
    holder = _Holder()
    qvars = quantizer.build(w.shape, "kernel", holder)
    return qvars


def test_effective_kernel_has_three_values_and_follows_threshold():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 8)).astype("float32")
    q = mq.TernaryWeightQuantizer(threshold=0.05, preserve_sparsity=False)
    qvars = _build(q, w)
    qvars["wp"].assign(1.27)
    qvars["wn"].assign(0.64)  # on the int8 grid of step 1.27/127 = 0.01
    out = q(tf.constant(w), False, qvars).numpy()
    values = np.unique(out)
    assert len(values) == 3
    np.testing.assert_allclose(values, [-0.64, 0.0, 1.27], rtol=1e-6)
    delta = 0.05 * np.abs(w).max()
    expected = np.where(w > delta, 1.27, np.where(w < -delta, -0.64, 0.0))
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_gradients_match_hand_derived_rules():
    # Hand derivation (Zhu et al. 2017, with the corrected Wn sign):
    # dL/dw = g*Wp (w > delta), g (|w| <= delta), g*Wn (w < -delta)
    # dL/dWp = sum(g over w > delta), dL/dWn = -sum(g over w < -delta).
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 6)).astype("float32")
    g = rng.normal(size=(4, 6)).astype("float32")
    q = mq.TernaryWeightQuantizer(threshold=0.3, preserve_sparsity=False)
    qvars = _build(q, w)
    qvars["wp"].assign(1.27)
    qvars["wn"].assign(0.5)
    wv = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(wv, True, qvars) * g)
    dw, dwp, dwn = tape.gradient(loss, [wv, qvars["wp"], qvars["wn"]])
    delta = 0.3 * np.abs(w).max()
    pos, neg = w > delta, w < -delta
    wn_snapped = np.round(0.5 / 0.01) * 0.01
    np.testing.assert_allclose(
        dw.numpy(), np.where(pos, g * 1.27, np.where(neg, g * wn_snapped, g)), rtol=1e-5)
    np.testing.assert_allclose(dwp.numpy(), g[pos].sum(), rtol=1e-5)
    np.testing.assert_allclose(dwn.numpy(), -g[neg].sum(), rtol=1e-5)


def test_scales_initialise_from_mean_magnitude_of_each_side():
    w = np.array([[0.9, -0.2, 0.01], [0.5, -0.6, -0.001]], "float32")
    layer = keras.layers.Dense(3)
    layer.build((None, 2))
    layer.kernel.assign(w)
    holder = _Holder()
    holder.layer = layer
    q = mq.TernaryWeightQuantizer(threshold=0.05)
    qvars = q.build(w.shape, "kernel", holder)
    # delta = 0.045: positives {0.9, 0.5}, negatives {0.2, 0.6}
    np.testing.assert_allclose(qvars["wp"].numpy(), 0.7, rtol=1e-6)
    np.testing.assert_allclose(qvars["wn"].numpy(), 0.4, rtol=1e-6)


def test_config_round_trip_and_validation():
    q = mq.TernaryWeightQuantizer(threshold=0.1, init="ones", depthwise=True)
    clone = mq.TernaryWeightQuantizer.from_config(q.get_config())
    assert clone == q
    restored = keras.utils.deserialize_keras_object(
        keras.utils.serialize_keras_object(q))
    assert restored == q
    with pytest.raises(ValueError, match="threshold"):
        mq.TernaryWeightQuantizer(threshold=1.5)


def test_cost_protocol():
    q = mq.TernaryWeightQuantizer()
    assert q.cost_bits({}) == 1.0
    assert q.cost_params({}) == 2
