"""The learned quantizers' fused training ops (``_learned_ops``): forward values
and gradients against numpy references written here from the formulas in
``learned.py``'s docstring, and against autodiff of the plain-TF expressions.

Weights, per channel c:  b = clip(round(8 gamma), lo_b, hi_b), half = 2^(b-1),
  neg = min(half, 127), s = max(|r|, 1e-8) / neg,
  y = clip(round(w / s), -neg, half - 1) * s       (round: straight-through)
Activations (per tensor): b as above, width0 = hi0 - lo0,
  lo = min(lo0 + beta width0, 0), hi = max(lo + alpha width0, 1e-3),
  s = (hi - lo) / (2^b - 1), zp = round(-lo / s) (no gradient),
  lo' = -zp s, hi' = lo' + (hi - lo),  y = round_ste(clip(x, lo', hi') / s) * s
"""
import numpy as np
import pytest
import tensorflow as tf

import mntk.quantization as mq
from mntk.compat import keras
from mntk.quantization import _grid

LN2 = np.log(2.0)


class _Holder(keras.layers.Layer):
    """Stand-in for a QuantizeWrapper: owns the quantizer variables."""


def _np_bits(gamma, min_bits, max_bits):
    raw = np.round(np.float32(8.0) * gamma)          # round half to even, as tf.round
    return np.clip(raw, min_bits, max_bits), (raw >= min_bits) & (raw <= max_bits)


def _np_weight(w, gamma, rng, u, min_bits, max_bits, channels_of):
    """(y, dL/dw, dL/dgamma, dL/drange) for L = sum(y * u); float32 forward,
    float64 sums. ``channels_of(t)`` reshapes a per-channel (C,) vector to
    broadcast over w; reductions sum all axes but the channel ones."""
    bits, pass_b = _np_bits(gamma, min_bits, max_bits)
    half = np.float32(2.0) ** (bits - 1)
    neg = np.minimum(half, 127).astype(np.float32)
    mag = np.maximum(np.abs(rng), np.float32(1e-8))
    s = (mag / neg).astype(np.float32)
    q = np.round(w / channels_of(s))
    lo, hi = channels_of(-neg), channels_of(half - 1)
    c = np.clip(q, lo, hi)
    y = c * channels_of(s)
    inside = (q >= lo) & (q <= hi)

    def per_channel(t):
        return t.astype(np.float64).reshape(-1, gamma.size).sum(0)
    ds = per_channel(u * np.where(inside, c - w / channels_of(s), c))
    dlo = per_channel(np.where(q < lo, u, 0)) * s
    dhi = per_channel(np.where(q > hi, u, 0)) * s
    dneg = ds * (-mag / neg ** 2) - dlo
    dhalf = dhi + np.where(half <= 127, dneg, 0)
    dgamma = 8 * pass_b * dhalf * half * LN2
    drng = ds / neg * (np.abs(rng) >= 1e-8) * np.sign(rng)
    return y, np.where(inside, u, 0), dgamma, drng


def _tf_grads(fn, inputs, u):
    with tf.GradientTape() as tape:
        y = fn()
        loss = tf.reduce_sum(y * u)
    return [y] + tape.gradient(loss, inputs)


@pytest.mark.parametrize("shape,depthwise,per_channel", [
    ((3, 3, 4, 6), False, True), ((3, 3, 3, 2), True, True), ((12, 5), False, False)])
def test_weight_quantizer_forward_and_gradients_match_numpy(shape, depthwise, per_channel):
    rng = np.random.default_rng(0)
    w = rng.normal(size=shape).astype(np.float32)
    mask = (rng.random(shape) < 0.7).astype(np.float32)  # a pruned kernel's zeros
    q = mq.LearnedPrecisionWeightQuantizer(4, 2, 8, depthwise=depthwise,
                                           per_channel=per_channel)
    kernel = tf.Variable(w)
    qvars = q.build(shape, "kernel", _Holder())
    qvars["sparsity_mask"].assign(mask)
    channels = qvars["gamma"].shape[0]
    # bits 2..8 (8: neg capped at 127), ranges below max|w| so values clip
    gamma = (rng.integers(2, 9, channels) / 8.0 + rng.uniform(-0.05, 0.05, channels))
    qvars["gamma"].assign(gamma.astype(np.float32))
    qvars["range"].assign(qvars["range"] * rng.uniform(0.4, 1.1, channels).astype(np.float32))
    u = rng.normal(size=shape).astype(np.float32)

    if not per_channel:
        def channels_of(t):
            return t.reshape(())
    elif depthwise:
        def channels_of(t):
            return t.reshape(shape[-2:])
    else:
        def channels_of(t):
            return t
    y, dw, dgamma, drng = _tf_grads(lambda: q(kernel, True, qvars),
                                    [kernel, qvars["gamma"], qvars["range"]], u)
    ref = _np_weight(w * mask, qvars["gamma"].numpy(), qvars["range"].numpy(), u,
                     2, 8, channels_of)
    np.testing.assert_allclose(y.numpy(), ref[0], rtol=1e-6, atol=1e-7)
    assert np.all(y.numpy()[mask == 0] == 0.0)
    np.testing.assert_array_equal(dw.numpy(), ref[1] * mask)
    np.testing.assert_allclose(dgamma.numpy(), ref[2], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(drng.numpy(), ref[3], rtol=1e-4, atol=1e-6)
    assert np.any(ref[2] != 0) and np.any(ref[1] == 0)  # the checks saw clipping


def test_weight_quantizer_matches_autodiff_of_the_plain_expression():
    rng = np.random.default_rng(1)
    shape = (3, 3, 4, 5)
    w = tf.Variable(rng.normal(size=shape).astype(np.float32))
    gamma = tf.Variable((rng.integers(2, 9, 5) / 8.0).astype(np.float32))
    rv = tf.Variable(rng.uniform(0.5, 2.0, 5).astype(np.float32))
    u = tf.constant(rng.normal(size=shape).astype(np.float32))
    q = mq.LearnedPrecisionWeightQuantizer(8, 2, 8, preserve_sparsity=False)

    def plain():
        bits = tf.clip_by_value(_grid.round_ste(gamma * 8.0), 2.0, 8.0)
        half = tf.pow(2.0, bits - 1.0)
        neg = tf.minimum(half, 127.0)
        s = tf.maximum(tf.abs(rv), 1e-8) / neg
        return tf.clip_by_value(_grid.round_ste(w / s), -neg, half - 1.0) * s
    fused = _tf_grads(lambda: q(w, True, {"gamma": gamma, "range": rv}), [w, gamma, rv], u)
    reference = _tf_grads(plain, [w, gamma, rv], u)
    np.testing.assert_array_equal(fused[0].numpy(), reference[0].numpy())
    # the step gradient sums terms of both signs, associated differently
    for a, b in zip(fused[1:], reference[1:]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=2e-5)


def _np_activation(x, gamma, lo0, hi0, alpha, beta, u, min_bits, max_bits):
    """(y, dx, dgamma, dalpha, dbeta) for L = sum(y * u)."""
    bits, pass_b = _np_bits(np.float32(gamma), min_bits, max_bits)
    f = np.float32
    width0 = f(hi0 - lo0)
    lo_raw = f(lo0 + f(beta * width0))
    lo = min(lo_raw, f(0))
    hi_raw = f(lo + f(alpha * width0))
    hi = max(hi_raw, f(1e-3))
    levels = f(f(2.0) ** bits - 1)
    span = f(hi - lo)
    s = f(span / levels)
    zp = np.round(-lo / s)
    lo_g = f(-zp * s)
    hi_g = f(lo_g + span)
    c = np.clip(x, lo_g, hi_g)
    r = np.round(c / s)
    y = r * s
    below, above = x < lo_g, x > hi_g
    u64 = u.astype(np.float64)
    dstep = (u64 * (r - c / s)).sum() - zp * (u64[below].sum() + u64[above].sum())
    dspan = u64[above].sum() + dstep / levels
    dbits = -dstep * span / levels ** 2 * 2.0 ** bits * LN2
    dhi_raw = dspan if hi_raw >= 1e-3 else 0.0
    dlo_raw = (dhi_raw - dspan) if lo_raw <= 0 else 0.0
    return (y, np.where(below | above, 0, u), 8 * pass_b * dbits,
            dhi_raw * width0, dlo_raw * width0)


@pytest.mark.parametrize("bits,alpha,beta", [(4, 0.7, -0.1), (8, 1.3, 0.05), (2, 0.5, 0.3),
                                             (5, 1.0, 1.0)])
def test_activation_quantizer_forward_and_gradients_match_numpy(bits, alpha, beta):
    rng = np.random.default_rng(bits)
    x = rng.normal(0.5, 1.5, size=(16, 5, 5, 3)).astype(np.float32)
    q = mq.LearnedPrecisionActivationQuantizer(bits, 2, 8)
    qvars = q.build(x.shape, "act", _Holder())
    xv = tf.Variable(x)
    q(xv, True, qvars)  # calibrates lo0 = min(x), hi0 = max(x)
    qvars["gamma"].assign(bits / 8.0 + 0.04)
    qvars["alpha"].assign(alpha)
    qvars["beta"].assign(beta)
    u = rng.normal(size=x.shape).astype(np.float32)
    got = _tf_grads(lambda: q(xv, True, qvars),
                    [xv, qvars["gamma"], qvars["alpha"], qvars["beta"]], u)
    ref = _np_activation(x, *(float(qvars[k].numpy()) for k in ("gamma", "lo", "hi", "alpha",
                                                                "beta")), u, 2, 8)
    np.testing.assert_allclose(got[0].numpy(), ref[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got[1].numpy(), ref[1])
    for a, b in zip(got[2:], ref[2:]):
        assert float(a) == pytest.approx(b, rel=1e-4, abs=1e-4)
    assert np.any(ref[1] == 0)  # some inputs fell outside the range


def test_activation_quantizer_matches_autodiff_of_the_plain_expression():
    rng = np.random.default_rng(3)
    x = tf.Variable(rng.normal(0.3, 2.0, size=(32, 7)).astype(np.float32))
    q = mq.LearnedPrecisionActivationQuantizer(3, 2, 8)
    qvars = q.build(x.shape, "act", _Holder())
    q(x, True, qvars)
    qvars["alpha"].assign(0.8)
    qvars["beta"].assign(0.1)
    u = tf.constant(rng.normal(size=(32, 7)).astype(np.float32))
    trained = [x, qvars["gamma"], qvars["alpha"], qvars["beta"]]

    def plain():
        lo, hi, step, _ = q.grid(qvars)  # plain TF, autodiff end to end
        return _grid.round_ste(tf.clip_by_value(x, lo, hi) / step) * step
    fused = _tf_grads(lambda: q(x, True, qvars), trained, u)
    reference = _tf_grads(plain, trained, u)
    np.testing.assert_array_equal(fused[0].numpy(), reference[0].numpy())
    for a, b in zip(fused[1:], reference[1:]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,depthwise,per_channel", [
    ((3, 3, 4, 6), False, True), ((3, 3, 3, 2), True, True), ((40, 5), False, False)])
def test_nonzeros_per_channel_counts_the_quantized_kernel(shape, depthwise, per_channel):
    rng = np.random.default_rng(2)
    w = rng.normal(size=shape).astype(np.float32)
    w[..., 0] *= (rng.random(w[..., 0].shape) < 0.5)  # a sparse channel (masked)
    holder = _Holder()
    holder.kernel = tf.Variable(w)
    q = mq.LearnedPrecisionWeightQuantizer(3, 2, 8, depthwise=depthwise,
                                           per_channel=per_channel)
    qvars = q.build(shape, "kernel", holder)
    qvars["range"].assign(qvars["range"] * 3.0)  # coarse steps: many round to 0
    quantized = q(holder.kernel, True, qvars).numpy()
    channels = shape[-2] * shape[-1] if depthwise else shape[-1]
    expected = (quantized.reshape(-1, channels) != 0).sum(0)
    got = q.nonzeros_per_channel(holder.kernel, qvars).numpy()
    np.testing.assert_array_equal(got, expected)
    assert expected.min() < expected.max() or expected.min() < quantized.size // channels
