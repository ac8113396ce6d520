"""Shared pieces of mntk's quantizers: straight-through rounding, channel
layout of Keras kernels, and the export fake-quant ops.

Why the export ops matter: the TFLite converter turns a constant weight that
feeds a ``FakeQuantWithMinMaxVars(PerChannel)`` op into int8 with the scale
``(max - min) / 254`` (narrow range). Choosing ``min = -127 s``, ``max = 127 s``
makes that scale exactly ``s``, so values already on a grid of step ``s``
become the integers ``w / s`` with no re-rounding: the learned grid is kept.
"""
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from mntk.compat import keras


def round_ste(x):
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + tf.stop_gradient(tf.round(x) - x)


@tf.custom_gradient
def fake_quant_ste(x, lo, hi, step):
    """``round_ste(clip(x, lo, hi) / step) * step`` for scalar lo, hi, step.

    The same values and gradients as that expression (straight-through
    rounding; the step gets the rounding error, as in LSQ, Esser et al., ICLR
    2020, arXiv 1902.08153), written out so the backward pass is a handful of
    ops instead of the broadcasting gradients autodiff builds for each scalar
    operand (about 50 ops per activation quantizer, most of a learned QAT
    step's overhead on small models):

        dx = g where lo <= x <= hi, else 0
        dlo = sum of g where x < lo,   dhi = sum of g where x > hi
        dstep = sum of g * (round(c / step) - c / step),  c = clip(x, lo, hi)
    """
    clipped = tf.clip_by_value(x, lo, hi)
    scaled = clipped / step
    rounded = tf.round(scaled)
    y = rounded * step

    def grad(g):
        below = x < lo
        above = x > hi
        zero = tf.zeros_like(g)
        dx = tf.where(tf.logical_or(below, above), zero, g)
        dlo = tf.reduce_sum(tf.where(below, g, zero))
        dhi = tf.reduce_sum(tf.where(above, g, zero))
        dstep = tf.reduce_sum(g * (rounded - scaled))
        return dx, dlo, dhi, dstep
    return y, grad


def fake_quant_channels(w, step, lo, hi):
    """``clip(round_ste(w / step), lo, hi) * step`` with per-channel step, lo, hi.

    ``step``, ``lo`` and ``hi`` broadcast over the kernel's trailing axes
    ((C,), (cin, mult) for a depthwise kernel, or (1,) per tensor). Values and
    gradients are those of the expression (straight-through rounding, LSQ step
    gradient), written out to spare autodiff's broadcasting gradients:

        q = round(w / step),  inside: lo <= q <= hi
        dw = g * inside,  dstep = sum g * (clip(q) - inside * w / step)
        dlo = sum g * step over q < lo,   dhi = sum g * step over q > hi
    (sums over the axes each channel's values span).
    """
    rank = len(w.shape)
    per_tensor = step.shape.num_elements() == 1
    axes = list(range(rank if per_tensor else rank - step.shape.rank))

    @tf.custom_gradient
    def fake_quant(w, step, lo, hi):
        scaled = w / step
        rounded = tf.round(scaled)
        clipped = tf.clip_by_value(rounded, lo, hi)

        def grad(g):
            below = rounded < lo
            above = rounded > hi
            zero = tf.zeros_like(g)
            outside = tf.logical_or(below, above)
            dw = tf.where(outside, zero, g)

            def per_channel(t):
                return tf.reshape(tf.reduce_sum(t, axes), tf.shape(step))
            dstep = per_channel(g * (clipped - tf.where(outside, zero, scaled)))
            dlo = per_channel(tf.where(below, g, zero)) * step
            dhi = per_channel(tf.where(above, g, zero)) * step
            return dw, dstep, dlo, dhi
        return clipped * step, grad
    return fake_quant(w, step, lo, hi)


def channel_count(tensor_shape, depthwise, per_channel=True):
    """Output channels of a kernel: last axis, cin*mult for depthwise, 1 per tensor."""
    if not per_channel:
        return 1
    shape = list(tensor_shape)
    if depthwise:
        return int(shape[-2]) * int(shape[-1])
    return int(shape[-1])


def to_kernel_shape(values, tensor_shape, depthwise, per_channel=True):
    """Reshape a (C,) vector so it broadcasts over a kernel's channel axes."""
    if not per_channel:
        return tf.reshape(values, [])
    shape = list(tensor_shape)
    if depthwise:
        return tf.reshape(values, shape[-2:])
    return values


def reduce_axes(tensor_shape, depthwise, per_channel=True):
    """Kernel axes that are summed over for one output channel."""
    rank = len(tensor_shape)
    if not per_channel:
        return list(range(rank))
    return list(range(rank - 2)) if depthwise else list(range(rank - 1))


def export_fake_quant(w, step, tensor_shape=None, depthwise=False):
    """Int8 fake-quant with scale exactly ``step`` (scalar or per channel).

    Per-channel fake-quant on a Dense kernel does not convert (the converter
    transposes it to (out, in) and rejects the moved axis), so Dense kernels
    use one step per tensor.

    ``w`` must already lie on the grid ``step * k`` with |k| <= 127; this op
    then changes nothing numerically but tells the converter the int8 scale.
    """
    step = tf.stop_gradient(tf.convert_to_tensor(step))
    if step.shape.rank == 1 and step.shape[0] == 1:
        step = tf.reshape(step, [])
    if step.shape.rank == 0:
        return tf.quantization.fake_quant_with_min_max_vars(
            w, -127.0 * step, 127.0 * step, num_bits=8, narrow_range=True)
    shape = list(tensor_shape)
    if depthwise:
        flat = tf.reshape(w, shape[:-2] + [1, shape[-2] * shape[-1]])
        flat = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            flat, -127.0 * step, 127.0 * step, num_bits=8, narrow_range=True)
        return tf.reshape(flat, shape)
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        w, -127.0 * step, 127.0 * step, num_bits=8, narrow_range=True)


def build_sparsity_mask(layer, name, tensor_shape, enabled):
    """A non-trainable 0/1 mask of the wrapped layer's current zeros, or None.

    Stored as a variable (not a tensor computed once, as tfmot's prune-preserve
    quantizer does) so that it survives save/load.
    """
    if not enabled:
        return None
    mask = layer.add_weight(
        name + "_sparsity_mask", shape=tensor_shape,
        initializer=keras.initializers.Ones(), trainable=False)
    weight = getattr(getattr(layer, "layer", None), name, None)
    if weight is not None:
        with tf.init_scope():
            mask.assign(tf.cast(tf.not_equal(weight, 0.0), mask.dtype))
    return mask


def initial_value(layer, name):
    """The wrapped layer's current value of weight ``name`` (eager), or None."""
    weight = getattr(getattr(layer, "layer", None), name, None)
    if weight is None:
        return None
    with tf.init_scope():
        return tf.convert_to_tensor(weight)


def keep_weight_order(wrapper):
    """Put the wrapped layer's trainable weights first, before ours.

    tfmot's ``QuantizeWrapperV2.build`` lists the inner layer's trainable
    weights first, but on load the inner layer is not built yet at that point,
    so a quantizer with *trainable* variables (tfmot's own have none) would get
    a different weight order on load than on save, and loading would fail.
    """
    inner = getattr(wrapper, "layer", None)
    if inner is None or not hasattr(wrapper, "_trainable_weights"):
        return
    have = {id(v) for v in wrapper._trainable_weights}
    missing = [w for w in inner.trainable_weights if id(w) not in have]
    wrapper._trainable_weights[:0] = missing


class Quantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """tfmot Quantizer compared by configuration (tfmot matches quantizers by
    equality when it clones and reloads wrapped layers)."""

    def __eq__(self, other):
        return type(other) is type(self) and other.get_config() == self.get_config()

    def __ne__(self, other):
        return not self.__eq__(other)

    __hash__ = None
