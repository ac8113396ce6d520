"""The learned-precision quantizers (``learned.py``) as single ops with a
hand-written backward, from their parameters to the quantized tensor.

Why: the straight-through backward of a fake-quant needs, over the whole
activation tensor, the in-range mask and the sums of the gradient below and
above the range. Written with comparisons and ``tf.where`` (bool tensors,
SelectV2) that is ~11 tensor-sized ops per quantizer, and the bool ops are
the slow ones on CPU: measured on this 2-core machine, the learned QAT step
of the tests' digits CNN spent most of its extra time over tfmot int8 QAT
there (one (64, 8, 8, 16) activation: 0.92 ms CPU for the where-form
forward + backward, 0.38 ms for the float form below, 0.29 ms for tfmot's
fused FakeQuantWithMinMaxVars + gradient). Here the side of the range is
one float ``sign(x - clip(x))`` (-1 below, 0 inside, +1 above) taken in
the forward, and the backward is products and sums of floats: the masks
are exact 0/1 factors, so the values are the same; only sums may be
associated differently.

The forward is the same expressions in the same order as plain TF (so the
same values, bit for bit), and the backward is the chain rule of those
expressions written out, with TF's own tie rules, so the gradients are
autodiff's (to float rounding; tested against autodiff and a numpy
reference):

- ``clip_by_value(x, a, b)`` passes the gradient where a <= x <= b;
- ``minimum(x, c)`` passes it where x <= c, ``maximum(x, c)`` where x >= c;
- ``round_ste(x) = x + stop_gradient(round(x) - x)`` passes it unchanged;
- ``pow(2, e)`` has d/de = 2^e ln 2;  ``abs(r)`` has d/dr = sign(r);
- straight-through fake-quant: d/dx passes inside the range, d/ds of
  ``round_ste(v / s) * s`` is ``round(v / s) - v / s`` (LSQ's step gradient,
  Esser et al., ICLR 2020, arXiv 1902.08153), a clipped bound gets the
  gradient of the values clipped to it.
"""
import numpy as np
import tensorflow as tf

from mntk.quantization import _grid

_LN2 = np.float32(np.log(2.0))


def _bits(gamma, min_bits, max_bits):
    """(clip(round_ste(8 gamma)), round_ste(8 gamma)): the bits and the clip's input.

    Differentiable with autodiff too (``grid()`` outside the fused ops).
    """
    ste = _grid.round_ste(gamma * 8.0)
    return tf.clip_by_value(ste, min_bits, max_bits), ste


def _bits_grad(dbits, ste, min_bits, max_bits):
    """d/dgamma of clip(round_ste(8 gamma)) given d/dbits."""
    inside = tf.logical_and(ste >= min_bits, ste <= max_bits)
    return tf.where(inside, dbits, tf.zeros_like(dbits)) * 8.0


def weight_grid(gamma, rng, min_bits, max_bits):
    """(bits, half, neg, magnitude, step) of the learned weight grid, per channel:
    b = clip(round_ste(8 gamma)), half = 2^(b-1), neg = min(half, 127),
    step = max(|r|, 1e-8) / neg; integers in [-neg, half - 1]."""
    bits, ste = _bits(gamma, float(min_bits), float(max_bits))
    return (bits, ste) + weight_step(bits, rng)


def weight_step(bits, rng):
    """(half, neg, magnitude, step) of the weight grid at ``bits`` (see weight_grid)."""
    half = tf.pow(2.0, bits - 1.0)
    neg = tf.minimum(half, 127.0)
    magnitude = tf.maximum(tf.abs(rng), 1e-8)
    return half, neg, magnitude, magnitude / neg


def learned_weight_fake_quant(w, gamma, rng, min_bits, max_bits, channel_shape):
    """``LearnedPrecisionWeightQuantizer``'s training forward and its backward.

    ``gamma`` and ``rng`` are (C,); ``channel_shape`` is the shape the
    per-channel values take to broadcast over ``w`` ((C,), (cin, mult) for a
    depthwise kernel, or (1,) per tensor). Forward:
    ``clip(round(w / s), -neg, half - 1) * s`` (see ``weight_grid``).
    """
    rank = len(w.shape)
    per_tensor = int(np.prod(channel_shape)) == 1
    axes = list(range(rank if per_tensor else rank - len(channel_shape)))
    flat_shape = tf.shape(gamma)

    @tf.custom_gradient
    def fake_quant(w, gamma, rng):
        _, ste, half, neg, magnitude, flat_step = weight_grid(gamma, rng, min_bits, max_bits)
        step = tf.reshape(flat_step, channel_shape)
        lo = tf.reshape(-neg, channel_shape)
        hi = tf.reshape(half - 1.0, channel_shape)
        scaled = w / step
        rounded = tf.round(scaled)
        clipped = tf.clip_by_value(rounded, lo, hi)
        side = tf.sign(rounded - clipped)  # -1 below lo, 0 inside, +1 above hi

        def grad(g):
            with tf.name_scope("learned_weight_grad"):
                return _grad(g)

        def _grad(g):
            outside = tf.abs(side)
            dw = g - g * outside

            def per_channel(t):
                return tf.reshape(tf.reduce_sum(t, axes), flat_shape)
            # d/ds of clip(round(w / s)) * s: clip(..) - w / s inside, clip(..) outside
            dstep = per_channel(g * (clipped - scaled * (1.0 - outside)))
            above = tf.nn.relu(side)
            # relu(side) - side = relu(-side) for side in {-1, 0, 1}; not
            # relu(-side): Grappler fuses Neg + Relu into _UnaryOpsComposition,
            # measured at ~1 ms on the digits CNN's (1024, 16) Dense kernel
            dlo = per_channel(g * (above - side)) * flat_step
            dhi = per_channel(g * above) * flat_step
            # step = magnitude / neg, lo = -neg, hi = half - 1
            dneg = dstep * ((-magnitude / neg) / neg) - dlo
            dhalf = dhi + tf.where(half <= 127.0, dneg, tf.zeros_like(dneg))
            dbits = dhalf * half * _LN2
            dmag = dstep / neg
            drng = tf.where(tf.abs(rng) >= 1e-8, dmag, tf.zeros_like(dmag)) * tf.sign(rng)
            return dw, _bits_grad(dbits, ste, float(min_bits), float(max_bits)), drng
        return clipped * step, grad
    return fake_quant(w, gamma, rng)


@tf.custom_gradient
def _round_identity_gradient(u):
    """tf.round(u) forward, bit for bit (also -0.0, which u + stop_gradient(
    round(u) - u) would turn into +0.0); identity gradient."""
    return tf.round(u), lambda g: g


def activation_grid(gamma, lo0, hi0, alpha, beta, min_bits, max_bits):
    """The learned activation grid and its intermediates (``LearnedPrecisionActivationQuantizer``):

        b = clip(round_ste(8 gamma)),  width0 = hi0 - lo0
        lo = min(lo0 + beta width0, 0),  hi = max(lo + alpha width0, 1e-3)
        step = (hi - lo) / (2^b - 1),  u = -lo / step,  zp = round_id(u)
        lo' = -zp step,  hi' = lo' + (hi - lo)

    ``round_id``: round forward, identity gradient (the zero point's
    straight-through rounding; Texas-EIC's Round, ENTRIES.md). The forward
    values are those of a plain round (exact export unchanged); the gradients
    are, with G = dL/dlo' (hi' moves with lo'):

        dL/dlo   += G              (d lo'/d lo = -step * d u/d lo = 1)
        dL/dstep += G (u - zp)     (d lo'/d step = -zp - step * lo / step^2)

    so the values clipped at lo' or hi' pull the shift beta through
    lo = min(lo0 + beta width0, 0): dL/dbeta = width0 * (sum of dL/dy over
    x outside [lo', hi']) where lo_raw <= 0 (and hi not clipped at 1e-3), as
    in the entry, where lo = lo0 + beta (hi0 - lo0). With a zero point that
    has no gradient, lo' = -zp step moves only with the step and hi' - lo'
    = alpha width0 does not depend on beta: beta's gradient was 0.

    lo <= 0 < hi keeps zero in the range, so 0 <= zp <= 2^b - 1: TF's
    FakeQuant (the export form; TFLite's int8 zero point) would nudge a
    range without zero to one with it, and the file would then clip where
    training does not (tested). A trained beta does not change what the
    file runs: the grid stays the multiples of the step, beta moves only
    the clip window, by whole steps.
    """
    bits, ste = _bits(gamma, float(min_bits), float(max_bits))
    width0 = hi0 - lo0
    lo_raw = lo0 + beta * width0
    lo = tf.minimum(lo_raw, 0.0)
    hi_raw = lo + alpha * width0
    hi = tf.maximum(hi_raw, 1e-3)
    power = tf.pow(2.0, bits)
    levels = power - 1.0
    span = hi - lo
    step = span / levels
    offset = -lo / step
    zero_point = _round_identity_gradient(offset)
    lo_grid = -zero_point * step
    hi_grid = lo_grid + span
    return dict(bits=bits, ste=ste, width0=width0, lo_raw=lo_raw, hi_raw=hi_raw,
                power=power, levels=levels, span=span, step=step, offset=offset,
                zero_point=zero_point, lo=lo_grid, hi=hi_grid)


def learned_activation_fake_quant(x, gamma, lo0, hi0, alpha, beta, min_bits, max_bits):
    """``LearnedPrecisionActivationQuantizer``'s training forward and backward:
    ``round_ste(clip(x, lo', hi') / step) * step`` on ``activation_grid``.
    Gradients reach x, gamma, alpha and beta (lo0, hi0 are calibrated, not
    trained); beta's through the zero point's straight-through rounding, see
    ``activation_grid``."""

    @tf.custom_gradient
    def fake_quant(x, gamma, alpha, beta):
        v = activation_grid(gamma, lo0, hi0, alpha, beta, min_bits, max_bits)
        step = v["step"]
        # one ClipByValue kernel: the same min-then-max as tf.clip_by_value
        clipped = tf.raw_ops.ClipByValue(t=x, clip_value_min=v["lo"], clip_value_max=v["hi"])
        side = tf.sign(x - clipped)  # -1 below lo', 0 inside, +1 above hi'
        # The backward's factors, made here so that each backward product
        # can reuse its factor's buffer (a fresh activation-sized buffer is
        # what these small ops mostly cost on CPU, measured).
        outside = tf.abs(side)
        above = tf.nn.relu(side)
        scaled = clipped / step
        rounded = tf.round(scaled)
        error = rounded - scaled

        def grad(g):
            with tf.name_scope("learned_activation_grad"):
                return _grad(g)

        def _grad(g):
            g_out = g * outside
            # d lo' + d hi' (sum of g outside) and d hi' (sum of g above)
            dlo_hi = tf.reduce_sum(g_out)
            dhi_grid = tf.reduce_sum(g * above)
            dstep = tf.reduce_sum(g * error)
            # after the sums, so that g or g_out is free and its buffer reused
            with tf.control_dependencies([dlo_hi, dhi_grid, dstep]):
                dx = g - g_out
            # lo' = -zp step, hi' = lo' + span, step = span / levels, and
            # zp = round_id(u), u = -lo / step: d lo'/d step = u - zp and
            # d lo'/d lo = 1 (activation_grid); scalars, no per-element work
            dstep = dstep + dlo_hi * (v["offset"] - v["zero_point"])
            dspan = dhi_grid + dstep / v["levels"]
            dlevels = dstep * ((-v["span"] / v["levels"]) / v["levels"])
            dbits = dlevels * v["power"] * _LN2
            # span = hi - lo, hi = max(hi_raw, 1e-3), hi_raw = lo + alpha width0,
            # lo = min(lo_raw, 0), lo_raw = lo0 + beta width0
            dhi_raw = tf.where(v["hi_raw"] >= 1e-3, dspan, 0.0)
            dlo = dhi_raw - dspan + dlo_hi
            dlo_raw = tf.where(v["lo_raw"] <= 0.0, dlo, 0.0)
            return (dx, _bits_grad(dbits, v["ste"], float(min_bits), float(max_bits)),
                    dhi_raw * v["width0"], dlo_raw * v["width0"])
        return rounded * step, grad
    return fake_quant(x, gamma, alpha, beta)
