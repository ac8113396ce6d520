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


def clamped_activation_fake_quant(x, low, high, clip_low, clip_high):
    """The export form of a learned activation grid: int8 fake-quant over the
    8-bit container [low, high] right after the producing op (so the converter
    quantizes that op's output at the grid's step), the b-bit clamp
    [clip_low, clip_high], then the same fake-quant again so the clamp runs in
    int8."""
    y = tf.quantization.fake_quant_with_min_max_vars(
        x, low, high, num_bits=8, narrow_range=False)
    y = tf.clip_by_value(y, clip_low, clip_high)
    return tf.quantization.fake_quant_with_min_max_vars(
        y, low, high, num_bits=8, narrow_range=False)


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
