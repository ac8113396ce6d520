"""Binary weights: values and clipped straight-through gradient against numpy."""
import numpy as np
import pytest
import tensorflow as tf

import mntk.quantization as mq
from mntk.compat import keras


class _Holder(keras.layers.Layer):
    """Stand-in for a QuantizeWrapper: owns the quantizer variables."""


def _reference(w, axes):
    """XNOR-Net: out = sign(w) * alpha, alpha = mean |w| over one output channel."""
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    return np.sign(w) * alpha, alpha


# (kernel shape, depthwise, per_channel, axes reduced for one channel)
LAYOUTS = {
    "conv": ((3, 3, 4, 8), False, True, (0, 1, 2)),
    "depthwise": ((3, 3, 4, 2), True, True, (0, 1)),
    "dense_per_tensor": ((6, 5), False, False, (0, 1)),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("training", [True, False])
def test_values_match_numpy(layout, training):
    shape, depthwise, per_channel, axes = LAYOUTS[layout]
    w = np.random.default_rng(0).normal(size=shape).astype("float32")
    q = mq.BinaryWeightQuantizer(depthwise=depthwise, per_channel=per_channel,
                                 preserve_sparsity=False)
    qvars = q.build(w.shape, "kernel", _Holder())
    out = q(tf.constant(w), training, qvars).numpy()
    expected, _ = _reference(w, axes)
    # inference adds the int8 export fake-quant, exact on the +-alpha grid
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert q.cost_params(qvars) == (int(np.prod(shape)) // int(np.prod(
        [shape[a] for a in axes])))


def test_gradient_is_clipped_straight_through_plus_alpha_term():
    # d/dw_i sum_j g_j sign(w_j) alpha = g_i alpha 1(|w_i| <= clip)
    #                                     + sign(w_i)/n * sum_j g_j sign(w_j)
    # (alpha = mean |w| of the channel, n its element count)
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, 3)).astype("float32")
    g = rng.normal(size=(5, 3)).astype("float32")
    q = mq.BinaryWeightQuantizer(clip=0.8, preserve_sparsity=False)
    qvars = q.build(w.shape, "kernel", _Holder())
    wv = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(q(wv, True, qvars) * g)
    got = tape.gradient(loss, wv).numpy()
    alpha = np.abs(w).mean(0, keepdims=True)
    n = w.shape[0]
    expected = (g * alpha * (np.abs(w) <= 0.8)
                + np.sign(w) / n * (g * np.sign(w)).sum(0, keepdims=True))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_preserved_zeros_stay_zero_and_do_not_count_in_alpha():
    w = np.array([[0.5, 0.0], [-1.5, 2.0], [0.0, -1.0]], "float32")
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    layer.kernel.assign(w)
    holder = _Holder()
    holder.layer = layer
    q = mq.BinaryWeightQuantizer()
    qvars = q.build(w.shape, "kernel", holder)
    out = q(tf.constant(w), False, qvars).numpy()
    # channel 0: alpha = (0.5 + 1.5) / 2; channel 1: (2 + 1) / 2
    np.testing.assert_allclose(out, [[1.0, 0.0], [-1.0, 1.5], [0.0, -1.5]], rtol=1e-6)
