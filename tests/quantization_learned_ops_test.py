"""The learned quantizers' fused training ops (``_learned_ops``): forward values
and gradients against numpy references written here from the formulas in
``learned.py``'s docstring, and against autodiff of the plain-TF expressions.

Weights, per channel c:  b = clip(round(8 gamma), lo_b, hi_b), half = 2^(b-1),
  neg = min(half, 127), s = max(|r|, 1e-8) / neg,
  y = clip(round(w / s), -neg, half - 1) * s       (round: straight-through)
Activations (per tensor): b as above, width0 = hi0 - lo0,
  lo = min(lo0 + beta width0, 0), hi = max(lo + alpha width0, 1e-3),
  s = (hi - lo) / (2^b - 1), u = -lo / s, zp = round(u) (straight-through),
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
    u_zp = f(-lo / s)
    zp = np.round(u_zp)
    lo_g = f(-zp * s)
    hi_g = f(lo_g + span)
    c = np.clip(x, lo_g, hi_g)
    r = np.round(c / s)
    y = r * s
    below, above = x < lo_g, x > hi_g
    u64 = u.astype(np.float64)
    # G = dL/dlo' (hi' = lo' + span moves with it); d lo'/d s = u - zp and
    # d lo'/d lo = 1 through the zero point's straight-through rounding
    dlo_g = u64[below].sum() + u64[above].sum()
    dstep = (u64 * (r - c / s)).sum() + dlo_g * (np.float64(u_zp) - zp)
    dspan = u64[above].sum() + dstep / levels
    dbits = -dstep * span / levels ** 2 * 2.0 ** bits * LN2
    dhi_raw = dspan if hi_raw >= 1e-3 else 0.0
    dlo_raw = (dhi_raw - dspan + dlo_g) if lo_raw <= 0 else 0.0
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


def _np_grid_f32(lo0, hi0, gamma, alpha, beta):
    """(lo', hi', s) in float32, the same operations in the same order as the
    module docstring's formula (the forward the export depends on)."""
    f = np.float32
    bits = np.clip(np.round(f(8.0) * gamma), f(2), f(8)).astype(f)
    width0 = (hi0 - lo0).astype(f)
    lo = np.minimum((lo0 + beta * width0).astype(f), f(0))
    hi = np.maximum((lo + alpha * width0).astype(f), f(1e-3))
    span = (hi - lo).astype(f)
    s = (span / (f(2.0) ** bits - f(1))).astype(f)
    lo_g = (-np.round(-lo / s) * s).astype(f)
    return lo_g, (lo_g + span).astype(f), s


def _shift_case(per_channel):
    """A tensor with values below, inside and above the range: x ~ N(0.5, 1.5)
    calibrated, then alpha < 1 narrows it and beta moves it (lo stays < 0)."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 1.5, size=(32, 6, 3)).astype(np.float32)
    q = mq.LearnedPrecisionActivationQuantizer(4, 2, 8, per_channel=per_channel)
    qvars = q.build(x.shape, "act", _Holder())
    q(tf.constant(x), True, qvars)  # calibrates lo0, hi0 (per channel: of each)
    n = 3 if per_channel else 1
    for key, values in (("gamma", [5 / 8, 4 / 8, 3 / 8]), ("alpha", [0.6, 0.5, 0.7]),
                        ("beta", [0.15, 0.1, 0.2])):
        qvars[key].assign(np.asarray(values[:n], np.float32).reshape(qvars[key].shape))
    u = rng.normal(size=x.shape).astype(np.float32)
    return x, q, qvars, u


@pytest.mark.parametrize("per_channel", [False, True])
def test_activation_shift_beta_gets_the_entry_gradient(per_channel):
    """Texas-EIC (ENTRIES.md): lo = lo0 + beta (hi0 - lo0), the values clipped at
    lo or lo + (2^b - 1) s take their gradient to lo, so dL/dbeta = (hi0 - lo0)
    * sum(dL/dy over x outside the range). A zero point without gradient gave 0."""
    x, q, qvars, u = _shift_case(per_channel)
    xv = tf.Variable(x)
    keys = ("gamma", "alpha", "beta")
    got = _tf_grads(lambda: q(xv, True, qvars), [xv] + [qvars[k] for k in keys], u)
    cols = [(x[..., c], u[..., c], c) for c in range(3)] if per_channel else [(x, u, ())]
    params = {k: qvars[k].numpy() for k in ("gamma", "lo", "hi", "alpha", "beta")}
    for xc, uc, c in cols:
        p = {k: np.float32(v[c]) for k, v in params.items()}
        lo_g, hi_g, _ = _np_grid_f32(p["lo"], p["hi"], p["gamma"], p["alpha"], p["beta"])
        outside = (xc < lo_g) | (xc > hi_g)
        assert (xc < lo_g).any() and (xc > hi_g).any() and not outside.all()
        entry = float(p["hi"] - p["lo"]) * uc[outside].astype(np.float64).sum()
        assert abs(entry) > 1.0
        ref = _np_activation(xc, *(float(p[k]) for k in ("gamma", "lo", "hi", "alpha", "beta")),
                             uc, 2, 8)
        np.testing.assert_array_equal(got[0].numpy()[..., c] if per_channel else got[0].numpy(),
                                      ref[0])
        for g, want in zip(got[2:], ref[2:]):
            assert float(g.numpy()[c]) == pytest.approx(want, rel=1e-4, abs=1e-4)
        assert float(got[4].numpy()[c]) == pytest.approx(entry, rel=1e-4)


@pytest.mark.parametrize("per_channel", [False, True])
def test_activation_forward_is_the_plain_round_grid_bit_for_bit(per_channel):
    """The zero point's straight-through rounding changes gradients only: the
    grid (what the export writes) and the training forward are the float32
    formula's values bit for bit, -0.0 included (beta = 1.2: lo = -0.0)."""
    x, q, qvars, _ = _shift_case(per_channel)
    for beta in (None, 1.2, -0.6):
        if beta is not None:
            qvars["beta"].assign(np.full(qvars["beta"].shape, beta, np.float32))
        p = {k: qvars[k].numpy() for k in ("gamma", "lo", "hi", "alpha", "beta")}
        lo_g, hi_g, s = _np_grid_f32(p["lo"], p["hi"], p["gamma"], p["alpha"], p["beta"])
        v = (q.grid(qvars)[:3] if not per_channel
             else [mq._per_channel.grid(qvars, 2, 8)[k] for k in ("lo", "hi", "step")])
        for a, b in zip(v, (lo_g, hi_g, s)):
            np.testing.assert_array_equal(np.asarray(a).view(np.uint32),
                                          np.asarray(b, np.float32).view(np.uint32))
        # + 0.0: the per-channel path's round_ste (x + (round(x) - x)) gives
        # +0.0 where round gives -0.0, as it did before; equal values
        y = q(tf.constant(x), True, qvars).numpy() + np.float32(0.0)
        expected = (np.round(np.clip(x, lo_g, hi_g) / s) * s).astype(np.float32) + np.float32(0)
        np.testing.assert_array_equal(y.view(np.uint32), expected.view(np.uint32))


def test_shifted_range_keeps_zero_so_the_training_forward_is_the_export_form():
    """beta = 0.6 moves lo0 + beta width0 above 0. TF's FakeQuant (the export
    form, and TFLite's int8 tensor) nudges a range that does not hold 0 to
    one that does ([lo', lo' + 255 s] -> [0, 255 s]), so a training grid
    that kept lo > 0 would clip at lo' + 255 s where the file clips at 255 s
    (here x in (3.6, 4]). The grid keeps lo = min(lo_raw, 0), as the nudge
    does, so training forward, Keras inference (export form) and the float32
    formula agree."""
    rng = np.random.default_rng(3)
    x = rng.uniform(-0.5, 4.0, size=(64, 5, 4)).astype(np.float32)
    x[0, 0, :2] = (-0.5, 4.0)
    q = mq.LearnedPrecisionActivationQuantizer(8, 2, 8)
    qvars = q.build(x.shape, "act", _Holder())
    q(tf.constant(x), True, qvars)  # calibrates lo0 = -0.5, hi0 = 4
    qvars["alpha"].assign(0.8)
    qvars["beta"].assign(0.6)
    p = {k: np.float32(qvars[k].numpy()) for k in ("gamma", "lo", "hi", "alpha", "beta")}
    assert p["lo"] + p["beta"] * (p["hi"] - p["lo"]) > 0.5  # lo_raw = 2.2: no zero
    lo_g, hi_g, s = _np_grid_f32(p["lo"], p["hi"], p["gamma"], p["alpha"], p["beta"])
    assert lo_g == 0.0 and hi_g == pytest.approx(0.8 * 4.5) and (x > hi_g).sum() > 10
    expected = np.round(np.clip(x, lo_g, hi_g) / s) * s
    train = q(tf.constant(x), True, qvars).numpy()
    export = q(tf.constant(x), False, qvars).numpy()
    # TF's own FakeQuant nudge (the export form) against the training grid
    np.testing.assert_allclose(train, export, rtol=0, atol=1e-3 * s)
    np.testing.assert_allclose(export, expected, rtol=0, atol=1e-3 * s)
