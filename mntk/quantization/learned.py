"""Learned channel-wise range and precision (the Texas-EIC MicroNet entry).

Weights, per output channel c (two's-complement b-bit integers, 2^b levels):

    b_c = clip(round(8 * gamma_c), min_bits, max_bits)      (round: straight-through)
    lo_c = -min(2^(b_c - 1), 127),  hi_c = 2^(b_c - 1) - 1,   s_c = r_c / |lo_c|
    w_q = s_c * clip(round(w / s_c), lo_c, hi_c)              (round: straight-through)

with gamma_c and the range r_c trainable (gradients reach s_c through the
rounding error, as in LSQ, Esser et al., ICLR 2020, arXiv 1902.08153). A b-bit
channel has 2^b levels for b <= 7 ({-2, -1, 0, 1} * s at 2 bits); at 8 bits it
has 255 ([-127, 127]), because TFLite's int8 per-channel weights are
symmetric, zero point 0, narrow range (-128 is not allowed).

Where this departs from Texas-EIC (effnetb0_model_adjutable.py:103-155), and why:
- The entry's weight grids are asymmetric (a learned per-channel shift beta
  moves the range off zero). TFLite int8 per-channel weights must have zero
  point 0, so a shifted grid cannot be exported exactly; the weight grid here
  is centred on zero (two's complement), with only the range r_c learned.
- Export is exact: the grid is TFLite int8 per-channel with scale s_c / m_c,
  m_c = floor(127 / |lo_c|); its integers are the multiples k * m_c,
  lo_c <= k <= hi_c (the same values; the finer scale keeps TFLite's int32
  bias, rounded to units of s_in * s_weight, from shifting outputs by an
  activation step).

Activations, per tensor, the entry's range parameterization: the range
[lo0, hi0] is calibrated on the first training batch, then

    lo = lo0 + beta * (hi0 - lo0),   width = alpha * (hi0 - lo0)
    alpha in [0, 2] (init 1),  beta in [-0.6, 1.2] (init 0)    (train.py:89, :213-215)
    s = width / (2^b - 1)        (2^b levels, zero nudged onto the grid)
    lo' = -round(-lo / s) s,  hi' = lo' + width   (round: straight-through)

Gradients reach alpha through the step and hi', and beta through lo': the
values clipped at lo' or hi' give dL/dbeta = (hi0 - lo0) * sum(dL/dy over x
outside [lo', hi']) while lo <= 0, as in the entry, where lo = lo0 + beta
(hi0 - lo0) and Round has the identity gradient. Zero on the grid is a
departure (TFLite's zero point): lo is kept <= 0 (lo = min(lo0 + beta
(hi0 - lo0), 0)), as TF's FakeQuant nudges a range that does not hold 0,
so the training grid is the one the int8 file runs; beta has no gradient
while lo0 + beta (hi0 - lo0) > 0 (``_learned_ops.activation_grid``).

The entry quantized conv inputs per *channel*. Here activations are per
tensor by default (the departure), because only that exports exactly: in
TFLite an activation is int8, so below 8 bits it is exported in an 8-bit
container with the same step s (FakeQuant over [lo', lo' + 255 s]) after an
explicit clamp to the b-bit range [lo', lo' + (2^b - 1) s]: TFLite and Keras
then agree. ``per_channel=True`` (``LearnedPrecisionScheme(
activation_per_channel=True)``) trains the entry's per-channel grids in Keras
(one gamma, alpha, beta and [lo0, hi0] per channel of the last axis,
``_per_channel``), but an int8 TFLite tensor has one scale and zero point,
so at most 256 values, and C channel grids with their own steps and offsets
have more: no file holds them exactly. ``to_tflite`` exports them on one
8-bit grid per tensor (the union of the channels' ranges, each channel's
clip range kept) and says so on stderr. Measured (``bin/bench
per_channel_activation_export_agreement``: the learned-precision test's
digits CNN, 12 float epochs, 4 learned-QAT epochs from 8 bits to half the
8-bit score, 360 test digits, seeds 0/1/2), per tensor vs per channel:
TFLite/Keras top-1 agreement 99.4/100/100% vs 99.4/99.7/99.2%, max |logit
difference| 0.42/0.53/0.16 vs 0.98/0.84/1.37, Keras accuracy
93.1/96.1/96.1% vs 92.2/95.6/94.7%, mean activation bits 6.50/6.50/6.33 vs
6.47/6.51/6.59 (weights 2.5-2.9 bits either way). Per-channel grids gained
no accuracy on this model and cost parity, so per tensor stays the default.
"""
import numpy as np
import tensorflow as tf

from mntk.compat import keras
from mntk.quantization import _grid
from mntk.quantization import _learned_ops as _ops
from mntk.quantization import _per_channel as _pc

from mntk.quantization._grid import Quantizer as _Quantizer


@keras.utils.register_keras_serializable(package="mntk")
class GammaRange(keras.constraints.Constraint):
    """Keeps gamma where round(8 * gamma) is within [min_bits, max_bits]."""

    def __init__(self, min_bits, max_bits):
        self.min_bits, self.max_bits = float(min_bits), float(max_bits)

    def __call__(self, w):
        return tf.clip_by_value(w, (self.min_bits - 0.49) / 8.0,
                                (self.max_bits + 0.49) / 8.0)

    def get_config(self):
        return {"min_bits": self.min_bits, "max_bits": self.max_bits}


def _check_bits(owner, init_bits, min_bits, max_bits):
    if not 2 <= min_bits <= init_bits <= max_bits <= 8:
        raise ValueError(
            f"{owner}: need 2 <= min_bits <= init_bits <= max_bits <= 8, got "
            f"min_bits={min_bits}, init_bits={init_bits}, max_bits={max_bits} "
            "(TFLite stores weights and activations in int8).")


def _bits(gamma, min_bits, max_bits):
    return tf.clip_by_value(_grid.round_ste(gamma * 8.0), float(min_bits),
                            float(max_bits))


@keras.utils.register_keras_serializable(package="mntk")
class LearnedPrecisionWeightQuantizer(_Quantizer):
    """Per-channel learned range and bit width for a kernel (tfmot ``Quantizer``).

    Args:
      init_bits, min_bits, max_bits: initial / smallest / largest bit width.
      depthwise: the kernel is a DepthwiseConv2D kernel (channels = cin*mult).
      preserve_sparsity: keep the zeros the weight has at quantize time.
      trainable_bits: False freezes gamma (see ``freeze_precision``).
      per_channel: one range and bit width per output channel (False: per
        tensor; the schemes use that for Dense kernels, see ``_grid``).
    """

    def __init__(self, init_bits=8, min_bits=2, max_bits=8, depthwise=False,
                 preserve_sparsity=True, trainable_bits=True, per_channel=True):
        _check_bits("LearnedPrecisionWeightQuantizer", init_bits, min_bits, max_bits)
        self.init_bits, self.min_bits, self.max_bits = int(init_bits), int(min_bits), int(max_bits)
        self.depthwise = bool(depthwise)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.trainable_bits = bool(trainable_bits)
        self.per_channel = bool(per_channel)

    def build(self, tensor_shape, name, layer):
        _grid.keep_weight_order(layer)
        channels = _grid.channel_count(tensor_shape, self.depthwise, self.per_channel)
        gamma = layer.add_weight(
            name + "_gamma", shape=(channels,),
            initializer=keras.initializers.Constant(self.init_bits / 8.0),
            constraint=GammaRange(self.min_bits, self.max_bits),
            trainable=self.trainable_bits)
        rng = layer.add_weight(
            name + "_range", shape=(channels,),
            initializer=keras.initializers.Constant(1.0), trainable=True)
        mask = _grid.build_sparsity_mask(layer, name, tensor_shape,
                                         self.preserve_sparsity)
        value = _grid.initial_value(layer, name)
        if value is not None:
            with tf.init_scope():
                w = np.abs(value.numpy()).reshape(-1, channels)
                rng.assign(np.maximum(w.max(axis=0), 1e-8))
        result = {"gamma": gamma, "range": rng}
        if mask is not None:
            result["sparsity_mask"] = mask
        return result

    def bits_tensor(self, weights):
        """b_c = clip(round_ste(8 gamma_c)) as a tensor (the differentiable bits)."""
        return _bits(weights["gamma"], self.min_bits, self.max_bits)

    def _grid(self, weights):
        """(lo_c, hi_c, s_c) per channel: integers in [lo_c, hi_c], step s_c."""
        _, _, half, neg, _, step = _ops.weight_grid(
            weights["gamma"], weights["range"], self.min_bits, self.max_bits)
        return -neg, half - 1.0, step

    def _channel_shape(self, shape):
        """Shape of the per-channel values as they broadcast over the kernel."""
        if not self.per_channel:
            return (1,)
        if self.depthwise:
            return tuple(int(d) for d in shape[-2:])
        return (int(shape[-1]),)

    def __call__(self, inputs, training, weights, **kwargs):
        w = inputs
        if "sparsity_mask" in weights:
            w = w * weights["sparsity_mask"]
        shape = w.shape
        # One op with a hand-written backward (see _learned_ops): the values
        # and gradients of clip(round_ste(w / s), lo, hi) * s on _grid's grid.
        out = _ops.learned_weight_fake_quant(
            w, tf.convert_to_tensor(weights["gamma"]), tf.convert_to_tensor(weights["range"]),
            self.min_bits, self.max_bits, self._channel_shape(shape))
        if training:
            return out
        # Export with the finer int8 scale s_c / m_c, m_c = floor(127 / |lo_c|):
        # the values k * s_c are the same (integers k * m_c), but TFLite rounds
        # the int32 bias to units of s_in * s_weight, and at s_c itself (4-bit
        # weights, 4-bit inputs) that unit is coarse enough to shift ~1% of a
        # layer's outputs by one activation step against Keras (measured).
        lo, _, flat_step = self._grid(weights)
        multiple = tf.floor(127.0 / tf.reshape(-lo, [-1]))
        return _grid.export_fake_quant(out, tf.reshape(flat_step, [-1]) / multiple,
                                       shape, self.depthwise)

    def nonzeros_per_channel(self, kernel, weights, bits=None):
        """nnz_c: nonzeros of the quantized kernel per output channel, shape (C,)
        (no gradient; a count). C is the last axis, cin*mult for depthwise,
        also for a per-tensor grid.

        clip(round(w / s), lo, hi) != 0  iff  |w / s| > 0.5, because lo <= -2
        and hi >= 1 at b >= 2 bits and tf.round rounds 0.5 to 0 (half to
        even); w / s is the same division as the forward's, so the count is
        exact, without the forward's rounding and clipping. ``bits``: the
        channels' ``bits_tensor`` if the caller has it (not recomputed).
        """
        w = kernel
        if "sparsity_mask" in weights:
            w = w * weights["sparsity_mask"]
        if bits is None:
            bits = self.bits_tensor(weights)
        step = _ops.weight_step(bits, weights["range"])[-1]
        shape = [int(d) for d in w.shape]
        step = tf.reshape(step, self._channel_shape(shape))
        nonzero = tf.cast(tf.abs(w / step) > 0.5, tf.float32)
        channels = shape[-2] * shape[-1] if self.depthwise else shape[-1]
        return tf.reduce_sum(tf.reshape(nonzero, [-1, channels]), axis=0)

    def cost_bits(self, quantizer_vars):
        """Per-output-channel bits b_c (numpy array)."""
        gamma = np.asarray(quantizer_vars["gamma"])
        bits = np.clip(np.round(gamma * 8.0), self.min_bits, self.max_bits)
        return float(bits[0]) if bits.size == 1 else bits

    def cost_params(self, quantizer_vars):
        """One 32-bit step s_c per output channel."""
        return int(np.asarray(quantizer_vars["gamma"]).size)

    def get_config(self):
        return {"init_bits": self.init_bits, "min_bits": self.min_bits,
                "max_bits": self.max_bits, "depthwise": self.depthwise,
                "preserve_sparsity": self.preserve_sparsity,
                "trainable_bits": self.trainable_bits,
                "per_channel": self.per_channel}


#: Texas-EIC's clip ranges of the range scale alpha and shift beta (train.py:89).
ALPHA_RANGE = (0.0, 2.0)
BETA_RANGE = (-0.6, 1.2)


@keras.utils.register_keras_serializable(package="mntk")
class ClipRange(keras.constraints.Constraint):
    """Keeps a variable within [low, high] (Texas-EIC's alpha / beta clips)."""

    def __init__(self, low, high):
        self.low, self.high = float(low), float(high)

    def __call__(self, w):
        return tf.clip_by_value(w, self.low, self.high)

    def get_config(self):
        return {"low": self.low, "high": self.high}


@keras.utils.register_keras_serializable(package="mntk")
class LearnedPrecisionActivationQuantizer(_Quantizer):
    """Learned range (scale alpha, shift beta) and bit width for activations,
    per tensor or per channel.

    The base range [lo0, hi0] is the first training batch's min/max (a
    one-time calibration held in the ``initialized`` variable); alpha and beta
    then scale and shift it as in Texas-EIC, both trained by gradient (see the
    module docstring for beta's).

    ``per_channel=True``: one gamma, alpha, beta and [lo0, hi0] per channel of
    the tensor's last axis, as the entry had on conv inputs (``_per_channel``;
    plain TF ops, not the fused per-tensor op). TFLite exports it on one
    per-tensor 8-bit grid (``_per_channel``), not exactly.
    """

    def __init__(self, init_bits=8, min_bits=2, max_bits=8, trainable_bits=True,
                 per_channel=False):
        _check_bits("LearnedPrecisionActivationQuantizer", init_bits, min_bits, max_bits)
        self.init_bits, self.min_bits, self.max_bits = int(init_bits), int(min_bits), int(max_bits)
        self.trainable_bits = bool(trainable_bits)
        self.per_channel = bool(per_channel)

    def build(self, tensor_shape, name, layer):
        _grid.keep_weight_order(layer)
        sync = dict(aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        shape = ()
        if self.per_channel:
            channels = _pc.channel_count(tensor_shape, layer)
            if channels is None:
                raise ValueError(
                    f"LearnedPrecisionActivationQuantizer(per_channel=True) on "
                    f"{name!r} of layer {layer.name!r}: the tensor's last axis "
                    f"(shape {tensor_shape}) has no static size; use "
                    "per_channel=False.")
            shape = (int(channels),)
        gamma = layer.add_weight(
            name + "_gamma", shape=shape,
            initializer=keras.initializers.Constant(self.init_bits / 8.0),
            constraint=GammaRange(self.min_bits, self.max_bits),
            trainable=self.trainable_bits)
        lo = layer.add_weight(name + "_lo", shape=shape, trainable=False,
                              initializer=keras.initializers.Constant(-6.0), **sync)
        hi = layer.add_weight(name + "_hi", shape=shape, trainable=False,
                              initializer=keras.initializers.Constant(6.0), **sync)
        # Named *_range so size reports count them as quantizer state.
        # The entry's clip ranges as constraints (projected after each update),
        # so the forward pass carries no clip ops and their gradients.
        alpha = layer.add_weight(name + "_width_range", shape=shape, trainable=True,
                                 initializer=keras.initializers.Constant(1.0),
                                 constraint=ClipRange(*ALPHA_RANGE), **sync)
        beta = layer.add_weight(name + "_shift_range", shape=shape, trainable=True,
                                initializer=keras.initializers.Constant(0.0),
                                constraint=ClipRange(*BETA_RANGE), **sync)
        initialized = layer.add_weight(
            name + "_initialized", shape=(), trainable=False,
            initializer=keras.initializers.Zeros(), **sync)
        return {"gamma": gamma, "lo": lo, "hi": hi, "alpha": alpha, "beta": beta,
                "initialized": initialized}

    @staticmethod
    def _calibrate(x, weights):
        def assign():
            return tf.group(
                weights["lo"].assign(tf.minimum(tf.reduce_min(x), 0.0)),
                weights["hi"].assign(tf.maximum(tf.reduce_max(x), 1e-3)),
                weights["initialized"].assign(1.0))
        return tf.cond(weights["initialized"] > 0.5, tf.no_op, assign)

    def bits_tensor(self, weights):
        """b = clip(round_ste(8 gamma)) as a tensor (the differentiable bits)."""
        return _bits(weights["gamma"], self.min_bits, self.max_bits)

    def _grid_values(self, weights):
        return _ops.activation_grid(weights["gamma"], weights["lo"], weights["hi"],
                                    weights["alpha"], weights["beta"],
                                    self.min_bits, self.max_bits)

    def grid(self, weights):
        """(lo', hi', step, bits) of the b-bit grid; lo' = -zero_point * step.

        alpha, beta are kept in the entry's ranges by their constraints; zero
        stays on the grid (TFLite's zero point): lo <= 0 < hi.
        """
        v = self._grid_values(weights)
        return v["lo"], v["hi"], v["step"], v["bits"]

    def __call__(self, inputs, training, weights, **kwargs):
        x = inputs
        if self.per_channel:
            if training:
                with tf.control_dependencies([_pc.calibrate(x, weights)]):
                    x = tf.identity(x)
            elif _pc.exporting():
                return _pc.export_form(x, weights, self.min_bits, self.max_bits)
            return _pc.fake_quant(x, weights, self.min_bits, self.max_bits)
        if training:
            with tf.control_dependencies([self._calibrate(x, weights)]):
                x = tf.identity(x)
            # One op with a hand-written backward (see _learned_ops): the values
            # and gradients of round_ste(clip(x, lo', hi') / s) * s on grid().
            return _ops.learned_activation_fake_quant(
                x, *(tf.convert_to_tensor(weights[k])
                     for k in ("gamma", "lo", "hi", "alpha", "beta")),
                self.min_bits, self.max_bits)
        lo, hi, step, _ = self.grid(weights)
        # Export form (_grid.clamped_activation_fake_quant): the 8-bit
        # container [lo', lo' + 255 s] with the b-bit clamp [lo', hi'].
        lo, hi, step = (tf.stop_gradient(v) for v in (lo, hi, step))
        return _grid.clamped_activation_fake_quant(x, lo, lo + 255.0 * step, lo, hi)

    def cost_bits(self, quantizer_vars):
        """Bits b (per channel: an array; mntk.cost counts a tensor at its widest)."""
        bits = np.clip(np.round(np.asarray(quantizer_vars["gamma"]) * 8.0),
                       self.min_bits, self.max_bits)
        return bits.astype(np.float64) if self.per_channel else float(bits)

    def cost_params(self, quantizer_vars):
        return 0

    def get_config(self):
        return {"init_bits": self.init_bits, "min_bits": self.min_bits,
                "max_bits": self.max_bits, "trainable_bits": self.trainable_bits,
                "per_channel": self.per_channel}
