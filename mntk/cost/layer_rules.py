"""The built-in rules for Keras layers (MicroNet counter formulas).

conv / depthwise / separable / dense: see `rules.kernel_row`.
BatchNorm not folded: 2 values per channel, 1 mult + 1 add per element.
GlobalAveragePooling: C mults + (H*W - 1)*C adds. AveragePooling: (k*k - 1)
adds + 1 mult per output. MaxPooling: (k*k - 1) comparisons per output, as
mults. Add / Subtract: (n_inputs - 1) adds per element. Multiply:
(n_inputs - 1) mults per element. Rescaling / Normalization: 1 mult (+1 add
with an offset / mean) per element. LayerNormalization: 3 mults + 4 adds per
element. TF-op layers (`TFOpLambda`): see `tf_op_rule`; others with
`register_tf_op`.
"""
import math

import numpy as np

from mntk.compat import keras
from mntk.cost.rules import activation_name, register_rule

L = keras.layers


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _spatial(shape, channels) -> int:
    return int(math.prod(int(d) for d in shape)) // int(channels)


def _optional(ctx, key):
    return ctx.weights.get(key) if key in ctx.weights else None


def conv_rule(layer, ctx):
    """Conv1D/2D/3D, grouped too: each output is a dot product of k*k*cin/groups."""
    kernel = ctx.weight("kernel")
    channels = kernel.values.shape[-1]
    rows = [ctx.kernel("conv", kernel, channels, _spatial(ctx.output_shape, channels),
                       bias=_optional(ctx, "bias") if layer.use_bias else None,
                       add_bias=ctx.folded_bn and not layer.use_bias)]
    return rows + ctx.activation(layer.activation)


def depthwise_rule(layer, ctx):
    """Depthwise: vector length k*k per output channel (cin * depth_multiplier)."""
    kernel = ctx.weight("depthwise_kernel")
    channels = kernel.values.shape[-2] * kernel.values.shape[-1]
    rows = [ctx.kernel("depthwise", kernel, channels, _spatial(ctx.output_shape, channels),
                       bias=_optional(ctx, "bias") if layer.use_bias else None,
                       add_bias=ctx.folded_bn and not layer.use_bias)]
    return rows + ctx.activation(layer.activation)


def separable_rule(layer, ctx):
    """SeparableConv: a depthwise row, then a 1x1 pointwise row (with the bias)."""
    depthwise = ctx.weight("depthwise_kernel")
    pointwise = ctx.weight("pointwise_kernel")
    mid = depthwise.values.shape[-2] * depthwise.values.shape[-1]
    out = pointwise.values.shape[-1]
    spatial = _spatial(ctx.output_shape, out)
    mid_shape = (tuple(ctx.output_shape[:-1]) + (mid,) if _channels_last(layer)
                 else (mid,) + tuple(ctx.output_shape[1:]))
    folded, ctx.folded_bn = ctx.folded_bn, False
    rows = [ctx.kernel("depthwise", depthwise, mid, spatial, suffix="/depthwise",
                       shape=mid_shape)]
    ctx.folded_bn = folded
    # The depthwise result is an unquantized intermediate: 32-bit operands.
    rows.append(ctx.kernel("conv", pointwise, out, spatial, suffix="/pointwise",
                           bias=_optional(ctx, "bias") if layer.use_bias else None,
                           add_bias=folded and not layer.use_bias, input_bits=[32.0]))
    return rows + ctx.activation(layer.activation)


def dense_rule(layer, ctx):
    kernel = ctx.weight("kernel")
    channels = kernel.values.shape[-1]
    rows = [ctx.kernel("dense", kernel, channels, _spatial(ctx.output_shape, channels),
                       bias=_optional(ctx, "bias") if layer.use_bias else None,
                       add_bias=ctx.folded_bn and not layer.use_bias)]
    return rows + ctx.activation(layer.activation)


def batchnorm_rule(layer, ctx):
    """A BatchNorm not folded into a preceding kernel: y = x * a + b."""
    channels = int(np.prod([ctx.output_shape[a - 1 if a > 0 else a]
                            for a in np.atleast_1d(layer.axis)]))
    return [ctx.elementwise("bn", 1, 1, param_bits=2 * channels * ctx.float_bits,
                            operand_bits=list(ctx.input_bits) + [ctx.float_bits])]


def activation_layer_rule(layer, ctx):
    name = activation_name(layer.activation, f"layer {ctx.layer_name!r}")
    if name == "linear" or (name == "softmax" and ctx.is_model_output):
        return []
    mults, adds = ctx.activation_cost(name)
    return [ctx.elementwise(f"act:{name}", mults, adds)]


def softmax_rule(layer, ctx):
    if ctx.is_model_output:
        return []
    return [ctx.elementwise("act:softmax", *ctx.activation_cost("softmax"))]


def relu_layer_rule(layer, ctx):
    """ReLU layer: a compare, +1 for max_value (relu6), +1 each for slope/threshold."""
    mults = 1 + (layer.max_value is not None)
    mults += float(layer.negative_slope) != 0.0
    mults += float(layer.threshold) != 0.0
    name = "relu6" if layer.max_value is not None else "relu"
    if name in ctx.profile.activation_costs:
        return [ctx.elementwise(f"act:{name}", *ctx.activation_cost(name))]
    return [ctx.elementwise(f"act:{name}", int(mults), 0)]


def leaky_relu_rule(layer, ctx):
    """LeakyReLU: a compare and a multiply by the slope."""
    return [ctx.elementwise("act:leaky_relu", 2, 0)]


def global_avg_rule(layer, ctx):
    """C mults (the 1/(H*W) scale) + (H*W - 1) * C adds."""
    in_shape = ctx.input_shapes[0]
    channel_axis = -1 if _channels_last(layer) else 0
    channels = int(in_shape[channel_axis])
    positions = _spatial(in_shape, channels)
    return [ctx.row("global_avg_pool", bits=ctx.mult_bits(*ctx.input_bits, 32.0),
                    mult_terms=[(channels, ctx.mult_bits(*ctx.input_bits, 32.0))],
                    add_terms=[((positions - 1) * channels, ctx.accumulator_bits)])]


def global_max_rule(layer, ctx):
    in_shape = ctx.input_shapes[0]
    channels = int(in_shape[-1 if _channels_last(layer) else 0])
    positions = _spatial(in_shape, channels)
    bits = ctx.mult_bits(*ctx.input_bits)
    return [ctx.row("global_max_pool", bits=bits,
                    mult_terms=[((positions - 1) * channels, bits)])]


def avg_pool_rule(layer, ctx):
    window = int(np.prod(layer.pool_size))
    return [ctx.elementwise("avg_pool", 1, window - 1,
                            operand_bits=list(ctx.input_bits) + [32.0])]


def max_pool_rule(layer, ctx):
    window = int(np.prod(layer.pool_size))
    return [ctx.elementwise("max_pool", window - 1, 0)]


def add_rule(layer, ctx):
    """A merge of n tensors (a residual add): n - 1 adds per element; free
    under a profile that does not count residual adds."""
    if not ctx.profile.residual_adds:
        return []
    return [ctx.elementwise("add", 0, len(ctx.input_shapes) - 1)]


def is_broadcast(ctx) -> bool:
    """Some input has fewer elements than the output (an SE gate (1, 1, C))."""
    out = math.prod(int(d) for d in ctx.output_shape)
    return any(math.prod(int(d) for d in s) < out for s in ctx.input_shapes)


def multiply_rule(layer, ctx):
    """n - 1 mults per element; a broadcast scale (squeeze-excite) is free
    under a profile that does not count scale multiplies."""
    if not ctx.profile.scale_multiplies and is_broadcast(ctx):
        return []
    return [ctx.elementwise("multiply", len(ctx.input_shapes) - 1, 0)]


def rescaling_rule(layer, ctx):
    offset = np.asarray(layer.offset, dtype=np.float64)
    scale = np.asarray(layer.scale, dtype=np.float64)
    has_offset = bool(np.any(offset != 0))
    values = scale.size + (offset.size if has_offset else 0)
    return [ctx.elementwise("rescale", 1, int(has_offset),
                            operand_bits=list(ctx.input_bits) + [ctx.float_bits],
                            param_bits=values * ctx.float_bits)]


def normalization_rule(layer, ctx):
    """(x - mean) / sqrt(var): mean and 1/std per channel, 1 mult + 1 add."""
    values = int(np.size(layer.mean)) + int(np.size(layer.variance))
    return [ctx.elementwise("normalize", 1, 1,
                            operand_bits=list(ctx.input_bits) + [ctx.float_bits],
                            param_bits=values * ctx.float_bits)]


def layer_norm_rule(layer, ctx):
    """LayerNormalization, per element: mean (1 add), variance (1 mult + 1
    add), x - mean (1 add), * 1/std (1 mult), * gamma + beta (1 mult + 1
    add): 3 mults + 4 adds; stores gamma and beta."""
    values = sum(int(np.size(w.values)) for w in ctx.weights.values())
    return [ctx.elementwise("layer_norm", 3, 4,
                            operand_bits=list(ctx.input_bits) + [ctx.float_bits],
                            param_bits=values * ctx.float_bits)]


# --- TF-op layers (TFOpLambda: `x + 3.0`, `tf.math.multiply(x, y)`, ...) -----
# Elementwise ops by symbol: (mults, adds) per output element. A binary op
# with one tensor input has a constant (float) operand.
_TF_ELEMENTWISE = {
    "__operators__.add": (0, 1), "math.add": (0, 1), "math.subtract": (0, 1),
    "__operators__.sub": (0, 1), "math.multiply": (1, 0), "math.truediv": (1, 0),
    "math.divide": (1, 0), "math.negative": (0, 0),
}
_TF_ACTIVATIONS = {
    "nn.relu": "relu", "nn.relu6": "relu6", "math.sigmoid": "sigmoid",
    "nn.sigmoid": "sigmoid", "nn.silu": "swish", "nn.swish": "swish",
    "math.tanh": "tanh", "nn.tanh": "tanh", "nn.softmax": "softmax",
    "math.softmax": "softmax",
}
_TF_FREE = {"reshape", "compat.v1.transpose", "transpose", "concat", "expand_dims",
            "squeeze", "identity", "compat.v1.squeeze", "cast", "stop_gradient"}
_TF_OP_RULES = {}


def register_tf_op(symbol: str, fn):
    """Count the TF-op layer `tf.<symbol>` (a `TFOpLambda`, e.g.
    "math.reduce_max") with `fn(layer, ctx)`, like `register_rule`."""
    _TF_OP_RULES[symbol] = fn
    return fn


def tf_op_rule(layer, ctx):
    """A TF-op layer: elementwise arithmetic, activations, free reshapes.

    `x + c` / `x + y`: 1 add per element (a merge of two tensors is a
    residual add, free under a profile without them); `x * c` / `x * y`: 1
    mult per element (a broadcast scale is free under a profile without
    them); activations as `ACTIVATION_COSTS`. MobileNetV3's hard-sigmoid
    relu6(x + 3) * (1/6) so comes to 3 mults + 1 add, hard-swish
    x * hard_sigmoid(x) to 4 + 1, the extension costs in DESIGN.md.
    """
    symbol = getattr(layer, "symbol", "")
    if symbol in _TF_OP_RULES:
        return _TF_OP_RULES[symbol](layer, ctx)
    if symbol in _TF_FREE:
        return []
    if symbol in _TF_ACTIVATIONS:
        name = _TF_ACTIVATIONS[symbol]
        if name == "softmax" and ctx.is_model_output:
            return []
        return [ctx.elementwise(f"act:{name}", *ctx.activation_cost(name))]
    if symbol in _TF_ELEMENTWISE:
        mults, adds = _TF_ELEMENTWISE[symbol]
        tensors = len(ctx.input_shapes)
        if tensors >= 2 and adds and not ctx.profile.residual_adds:
            return []
        if tensors >= 2 and mults and not ctx.profile.scale_multiplies and is_broadcast(ctx):
            return []
        if not (mults or adds):
            return []
        constant = [] if tensors >= 2 else [ctx.float_bits]
        return [ctx.elementwise(f"tf:{symbol}", mults, adds,
                                operand_bits=list(ctx.input_bits) + constant)]
    raise ValueError(
        f"mntk.cost has no MicroNet rule for TF-op layer {ctx.layer_name!r} "
        f"(tf.{symbol}); count it with mntk.cost.register_tf_op({symbol!r}, fn) "
        "where fn(layer, ctx) returns a list of rows (see mntk.cost.rules), or "
        "replace the op by a Keras layer.")


def quantize_layer_rule(layer, ctx):
    """tfmot QuantizeLayer: stores its range; converting the input is free."""
    if not ctx.unwrapped.extra_param_bits:
        return []
    return [ctx.row("quantize", bits=ctx.unwrapped.output_bits or 32.0)]


register_rule(L.Conv1D.__mro__[1], conv_rule)  # the Conv base: Conv1D/2D/3D
register_rule(L.DepthwiseConv2D.__mro__[1], depthwise_rule)
register_rule(L.SeparableConv2D.__mro__[1], separable_rule)
register_rule(L.Dense, dense_rule)
register_rule(L.BatchNormalization, batchnorm_rule)
register_rule(L.Activation, activation_layer_rule)
register_rule(L.Softmax, softmax_rule)
register_rule(L.ReLU, relu_layer_rule)
register_rule(L.LeakyReLU, leaky_relu_rule)
for _cls in (L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalAveragePooling3D):
    register_rule(_cls, global_avg_rule)
for _cls in (L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D):
    register_rule(_cls, global_max_rule, passes_bits=True)
for _cls in (L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D):
    register_rule(_cls, avg_pool_rule)
for _cls in (L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D):
    register_rule(_cls, max_pool_rule, passes_bits=True)
register_rule(L.Add, add_rule)
register_rule(L.Subtract, add_rule)
register_rule(L.Multiply, multiply_rule)
register_rule(L.Rescaling, rescaling_rule)
register_rule(L.Normalization, normalization_rule)
register_rule("QuantizeLayer", quantize_layer_rule, passes_bits=True)
register_rule(L.LayerNormalization, layer_norm_rule)
register_rule("TFOpLambda", tf_op_rule)
