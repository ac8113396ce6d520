"""Learned precision: grid formula (numpy), bits in range, bits move under CostTarget."""
import numpy as np
import tensorflow as tf

import mntk.quantization as mq
from _quantization_helpers import compile_model, tiny_model


def test_weight_grid_matches_numpy_reference():
    q = mq.quantize(tiny_model(), scheme=mq.LearnedPrecisionScheme(init_bits=3), skip=[])
    wrapper = q.get_layer("quant_pw")
    weight, quantizer, qvars = wrapper._weight_vars[0]
    w = weight.numpy()
    r = qvars["range"].numpy()
    np.testing.assert_allclose(r, np.abs(w).reshape(-1, 16).max(0), rtol=1e-6)
    # b = 3 -> n = 2^(3-1) - 1 = 3 levels each side, s = r / 3
    s = r / 3.0
    expected = np.clip(np.round(w / s), -3, 3) * s
    np.testing.assert_allclose(mq.quantized_weights(q)["pw"], expected, rtol=1e-5, atol=1e-7)


def test_bits_stay_in_range_and_fall_under_cost_target(digits_split):
    x, y = (a[:256] for a in digits_split[0])
    q = mq.quantize(tiny_model(), scheme=mq.LearnedPrecisionScheme(
        init_bits=8, min_bits=2, max_bits=8), skip=[])
    q.add_loss(mq.CostTarget(q, target=3.0, coefficient=5.0))
    compile_model(q, lr=0.02)
    before = float(mq.mean_learned_bits(q))
    q.fit(x, y, batch_size=32, epochs=2, verbose=0)
    after = float(mq.mean_learned_bits(q))
    assert before == 8.0 and after < before
    for entry in mq.bit_widths(q).values():
        for bits in entry.values():
            assert bits is None or 2.0 <= bits <= 8.0


def test_cost_target_sign_flips_below_target():
    q = mq.quantize(tiny_model(), scheme=mq.LearnedPrecisionScheme(init_bits=2), skip=[])
    term = mq.CostTarget(q, target=4.0)
    gammas = [v for v in q.trainable_weights if "gamma" in v.name]
    with tf.GradientTape() as tape:
        loss = term()
    grads = tape.gradient(loss, gammas)
    # below target: d(loss)/d(gamma) < 0, so gradient descent raises the bits
    assert all(float(tf.reduce_sum(g)) < 0 for g in grads if g is not None)


def test_freeze_precision_makes_gamma_non_trainable():
    q = mq.quantize(tiny_model(), scheme=mq.LearnedPrecisionScheme(), skip=[])
    frozen = mq.freeze_precision(q)
    assert frozen and not any(v.name.endswith("_gamma:0") for v in q.trainable_weights)
