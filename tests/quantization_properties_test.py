"""Invariants of the quantizers on many kernels (hypothesis property tests).

- TTQ: at most 3 distinct values per kernel, and the inference (export) values
  are integers times the int8 step max(Wp, Wn) / 127.
- Learned precision: bits within [min_bits, max_bits] whatever gamma is, and
  every value an integer k times the channel's step with |k| <= 2^(b-1) - 1.
- Binary: per channel, only +-alpha.
"""
import numpy as np
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import mntk.quantization as mq
from mntk.compat import keras

# few, small examples: each runs TensorFlow ops eagerly. Derandomized, so a CI
# run draws the same examples as the run that passed here.
FEW = settings(max_examples=20, deadline=None, derandomize=True)

# no subnormals: TensorFlow's CPU kernels flush them to zero (1.7e-44 -> 0),
# which is the platform's arithmetic, not the quantizer's
# and no weight below 1e-6 in magnitude: the quantizers floor their steps at
# 1e-12 to stay finite on all-zero channels, so a channel of 1e-12 weights is
# not on the grid the formula gives (a real kernel never is that small)
_floats = st.floats(-2.0, 2.0, width=32, allow_nan=False, allow_infinity=False,
                    allow_subnormal=False).map(lambda v: v if abs(v) > 1e-6 else 0.0)
_kernels = hnp.arrays(np.float32, st.sampled_from([(4, 3), (2, 2, 3, 4), (1, 1, 5, 2)]),
                      elements=_floats)


class _Holder(keras.layers.Layer):
    """Stand-in for a QuantizeWrapper: owns the quantizer variables."""


def _on_grid(values, step, limit):
    k = values / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert np.all(np.abs(np.round(k)) <= limit)


@FEW
@given(w=_kernels, threshold=st.floats(0.0, 0.9),
       wp=st.floats(0.01, 3.0), wn=st.floats(0.01, 3.0), training=st.booleans())
def test_ternary_has_at_most_three_values_on_the_int8_grid(w, threshold, wp, wn, training):
    q = mq.TernaryWeightQuantizer(threshold=threshold, preserve_sparsity=False)
    qvars = q.build(w.shape, "kernel", _Holder())
    qvars["wp"].assign(wp)
    qvars["wn"].assign(wn)
    out = q(tf.constant(w), training, qvars).numpy()
    assert len(np.unique(out)) <= 3
    _on_grid(out, max(wp, wn) / 127.0, 127)


@FEW
@given(data=st.data(), min_bits=st.integers(2, 8), training=st.booleans())
def test_learned_bits_in_range_and_values_on_the_b_bit_grid(data, min_bits, training):
    max_bits = data.draw(st.integers(min_bits, 8))
    w = data.draw(_kernels)
    channels = w.shape[-1]
    gamma = data.draw(hnp.arrays(np.float32, channels, elements=st.floats(-1.0, 3.0, width=32)))
    ranges = data.draw(hnp.arrays(np.float32, channels, elements=st.floats(0.0625, 2.0, width=32)))
    q = mq.LearnedPrecisionWeightQuantizer(init_bits=min_bits, min_bits=min_bits,
                                           max_bits=max_bits, preserve_sparsity=False)
    qvars = q.build(w.shape, "kernel", _Holder())
    qvars["gamma"].assign(gamma)  # assign() skips GammaRange: bits must clip anyway
    qvars["range"].assign(ranges)
    bits = np.broadcast_to(q.cost_bits(qvars), (channels,))
    assert np.all((bits >= min_bits) & (bits <= max_bits))
    np.testing.assert_array_equal(bits, np.clip(np.round(8 * gamma), min_bits, max_bits))
    out = q(tf.constant(w), training, qvars).numpy().reshape(-1, channels)
    # two's-complement b-bit integers [-2^(b-1), 2^(b-1) - 1] (2^b levels),
    # [-127, 127] at 8 bits (TFLite's narrow-range int8 weights)
    neg = np.minimum(2 ** (bits - 1), 127)
    for c in range(channels):
        _on_grid(out[:, c], ranges[c] / neg[c], neg[c])
        assert np.round(out[:, c] / (ranges[c] / neg[c])).max() <= 2 ** (bits[c] - 1) - 1


@FEW
@given(w=_kernels, training=st.booleans())
def test_binary_is_plus_or_minus_alpha_per_channel(w, training):
    q = mq.BinaryWeightQuantizer(preserve_sparsity=False)
    qvars = q.build(w.shape, "kernel", _Holder())
    out = q(tf.constant(w), training, qvars).numpy().reshape(-1, w.shape[-1])
    alpha = np.abs(w).reshape(-1, w.shape[-1]).mean(0)
    np.testing.assert_allclose(np.abs(out), np.broadcast_to(
        np.where(w.reshape(-1, w.shape[-1]) == 0, 0, alpha), out.shape), rtol=1e-5)
