"""TTQ quantizer: values, gradient rules (numpy reference), config, cost protocol."""
import numpy as np
import pytest
import tensorflow as tf

from mntk.compat import keras
import mntk.quantization as mq
from _marks import fast_first


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
    q = mq.TernaryWeightQuantizer(threshold=0.1, init="ones", depthwise=True,
                                  decay_scales=True)
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


def _ternary_scales(model):
    return [v for v in model.trainable_variables
            if v.name.split("/")[-1].split(":")[0].endswith(("_wp", "_wn"))]


@pytest.mark.parametrize("decay_scales", fast_first([True, False]))
def test_official_code_options_ones_init_and_decayed_scales(decay_scales):
    """The TTQ code's choices (ternary.py:30-53): Wp = Wn = 1.0 at the start,
    and the scales under the same coupled L2 as the kernels."""
    from _quantization_helpers import tiny_model
    float_model = tiny_model()
    kernels = [float_model.get_layer(n).get_weights()[0] for n in
               ("stem", "dw", "pw", "fc", "logits")]
    scheme = mq.TernaryScheme(init="ones", decay_scales=decay_scales, depthwise="same")
    model = mq.quantize(float_model, scheme=scheme, skip=set())
    scales = _ternary_scales(model)
    assert len(scales) == 2 * 5   # every kernel ternarized: a Wp and a Wn each
    np.testing.assert_array_equal([s.numpy() for s in scales], 1.0)  # not data-driven
    rng = np.random.default_rng(0)
    values = rng.uniform(0.2, 2.0, size=len(scales))
    for s, v in zip(scales, values):
        s.assign(v)
    coefficient = 2e-4
    mntk_l2 = __import__("mntk").regularizers.apply_l2
    mntk_l2(model, coefficient, on="kernels")
    got = float(tf.add_n(model.losses))
    reference = sum(np.sum(k.astype(np.float64) ** 2) for k in kernels)
    if decay_scales:
        reference += np.sum(values.astype(np.float32).astype(np.float64) ** 2)
    assert got == pytest.approx(coefficient / 2 * reference, rel=1e-5)
    # the decay reaches the scales' gradients only with the option
    with tf.GradientTape() as tape:
        loss = tf.add_n(model.losses)
    grads = tape.gradient(loss, scales)
    if decay_scales:
        np.testing.assert_allclose([g.numpy() for g in grads],
                                   coefficient * values.astype(np.float32), rtol=1e-5)
    else:
        assert all(g is None for g in grads)


def test_runner_fields_reach_the_scheme():
    from mntk.train import schema
    from mntk.train.stages.quantize import make_scheme
    from recipes import ttq_cifar10
    cfg = schema.resolve(ttq_cifar10.get_config("smoke")).quantize
    quantizer = make_scheme(cfg).weight_quantizer(keras.layers.Dense(2), depthwise=False)
    assert (quantizer.init, quantizer.decay_scales) == ("ones", True)
    default = schema.resolve({"data": {"name": "digits"}, "stages": ("quantize",),
                              "quantize": {"scheme": "ternary"}})
    quantizer = make_scheme(default.quantize).weight_quantizer(keras.layers.Dense(2), False)
    assert (quantizer.init, quantizer.decay_scales) == ("mean", False)
