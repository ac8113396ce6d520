"""Per-channel learned activation grids (``LearnedPrecisionActivationQuantizer(
per_channel=True)``) and how they are exported to TFLite.

Training and Keras inference, per channel c of the tensor's last axis (the
Texas-EIC entry's per-channel conv inputs, effnetb0_model_adjutable.py:103-155),
each channel with its own ``activation_grid`` (``_learned_ops``):

    y = round_ste(clip(x, lo'_c, hi'_c) / s_c) * s_c,   s_c = (hi'_c - lo'_c) / (2^b_c - 1)

written with plain TF ops (autodiff gives the same straight-through and LSQ
step gradients as the fused per-tensor op, the shift beta_c's through the
zero point's straight-through rounding; tested against numpy).

Export: a TFLite activation tensor has one scale and zero point, and integer
TFLite has no rounding op to put a coarser per-channel step on it, so a
per-channel grid cannot be exported exactly. ``mntk.export.to_tflite`` traces
the model inside ``per_tensor_export()``, where each per-channel quantizer
becomes the best per-tensor grid that holds every channel:

    L = min_c lo'_c,  H = max_c hi'_c,  S = (H - L) / 255   (the union, 8 bits)
    y = FQ8(clip(FQ8(x), round(lo'_c / S) S, round(hi'_c / S) S))

(FQ8: int8 fake-quant on [L, L + 255 S] with zero on the grid). Each
channel keeps its learned clip range (to the nearest union step, as int8
MINIMUM/MAXIMUM with per-channel bounds); its precision becomes the union's
8-bit step S, finer than s_c where the channel's range is wide, coarser where
a narrow channel had 8 bits. ``verify`` then compares Keras (the per-channel
model as trained) with that file: the difference is the measured cost
(BUILD.md, "Per-channel activations").
"""
import contextlib
import threading

import tensorflow as tf

from mntk import wrapped
from mntk.quantization import _grid
from mntk.quantization import _learned_ops as _ops

_STATE = threading.local()


@contextlib.contextmanager
def per_tensor_export():
    """Within this block, per-channel learned activation quantizers trace their
    per-tensor export form (see the module docstring); ``to_tflite`` uses it."""
    before = getattr(_STATE, "export", False)
    _STATE.export = True
    try:
        yield
    finally:
        _STATE.export = before


def exporting():
    return getattr(_STATE, "export", False)


def per_channel_activation_layers(model):
    """Names of the layers of ``model`` whose output has a per-channel learned
    activation grid (the ones export maps onto one per-tensor grid)."""
    names = []
    for layer in wrapped.quantize_wrappers(model):
        acts = [a.quantizer for a in wrapped.activation_quantizers(layer)]
        acts += [a.quantizer for a in wrapped.output_quantizers(layer)]
        if any(getattr(q, "per_channel", False) and hasattr(q, "grid") for q in acts):
            names.append(layer.name)
    return names


def calibrate(x, weights):
    """lo0_c = min(min x_c, 0), hi0_c = max(max x_c, 1e-3) on the first batch."""
    axes = list(range(len(x.shape) - 1))

    def assign():
        return tf.group(
            weights["lo"].assign(tf.minimum(tf.reduce_min(x, axes), 0.0)),
            weights["hi"].assign(tf.maximum(tf.reduce_max(x, axes), 1e-3)),
            weights["initialized"].assign(1.0))
    return tf.cond(weights["initialized"] > 0.5, tf.no_op, assign)


def grid(weights, min_bits, max_bits):
    """``activation_grid`` with (C,) parameters: its values, one per channel."""
    return _ops.activation_grid(weights["gamma"], weights["lo"], weights["hi"],
                                weights["alpha"], weights["beta"], min_bits, max_bits)


def fake_quant(x, weights, min_bits, max_bits):
    """round_ste(clip(x, lo'_c, hi'_c) / s_c) * s_c over the last axis.

    tf.clip_by_value's gradient gives the clipped values' gradient to the
    bound they were clipped to (reduced over the broadcast axes), round_ste
    passes it straight through, and so does the zero point's rounding in
    ``activation_grid``, so gamma, alpha and beta of every channel get the
    fused per-tensor op's gradients, channel by channel (beta_c: width0_c
    times the sum of dL/dy over channel c's values outside [lo'_c, hi'_c]).
    """
    v = grid(weights, min_bits, max_bits)
    clipped = tf.clip_by_value(x, v["lo"], v["hi"])
    return _grid.round_ste(clipped / v["step"]) * v["step"]


def union_grid(v):
    """(L, H, S): the 8-bit per-tensor grid over all channels' [lo'_c, hi'_c],
    zero on the grid (L = -round(-min lo'_c / S) S, H = L + 255 S)."""
    low, high = tf.reduce_min(v["lo"]), tf.reduce_max(v["hi"])
    step = (high - low) / 255.0
    low = -tf.round(-low / step) * step
    return low, low + 255.0 * step, step


def export_form(x, weights, min_bits, max_bits):
    """The per-tensor form ``to_tflite`` converts (see the module docstring)."""
    v = grid(weights, min_bits, max_bits)
    v = {k: tf.stop_gradient(t) for k, t in v.items()}
    low, high, step = union_grid(v)
    lo_c = tf.round(v["lo"] / step) * step
    hi_c = tf.round(v["hi"] / step) * step
    return _grid.clamped_activation_fake_quant(x, low, high, lo_c, hi_c)


def channel_count(tensor_shape, layer):
    """Size of the quantized tensor's last axis, or None when it is not static.

    tfmot builds activation quantizers with ``tensor_shape=None`` (inside
    ``QuantizeWrapper.build``); the tensor is then the wrapped layer's output,
    whose shape follows from the wrapper's build input shape.
    """
    if tensor_shape is None:
        inner = getattr(layer, "layer", None)
        built = getattr(layer, "_build_input_shape", None)
        if inner is None or built is None:
            return None
        tensor_shape = inner.compute_output_shape(built)
    shape = tf.TensorShape(tensor_shape)
    if shape.rank is None or shape.rank == 0 or shape[-1] is None:
        return None
    return int(shape[-1])
