"""Binary weights: ``w_b = sign(w) * alpha_c``, alpha_c = mean |w| of channel c.

XNOR-Net style scaling (Rastegari et al., ECCV 2016, arXiv 1603.05279); the
MB-PM MicroNet entry used binary weights. Gradient: clipped straight-through
estimator, ``d sign(w)/dw = 1 if |w| <= clip else 0`` (Hubara et al., 2016);
alpha_c gets its gradient by autodiff.

Export: per-channel int8 with scale ``alpha_c / 127``, so each channel holds
exactly the two integers {-127, +127} (and 0 where a pruned weight was 0).
"""
import tensorflow as tf

from mntk.compat import keras
from mntk.quantization import _grid

from mntk.quantization._grid import Quantizer as _Quantizer


@keras.utils.register_keras_serializable(package="mntk")
class BinaryWeightQuantizer(_Quantizer):
    """Per-channel scaled sign quantizer (a tfmot ``Quantizer``).

    Args:
      clip: |w| beyond which the straight-through gradient is zero.
      depthwise: the kernel is a DepthwiseConv2D kernel (channels = cin*mult).
      preserve_sparsity: keep the zeros the weight has at quantize time.
      per_channel: one alpha per output channel (False: per tensor; the
        schemes use that for Dense kernels, see ``_grid``).
    """

    def __init__(self, clip=1.0, depthwise=False, preserve_sparsity=True,
                 per_channel=True):
        self.clip = float(clip)
        self.depthwise = bool(depthwise)
        self.preserve_sparsity = bool(preserve_sparsity)
        self.per_channel = bool(per_channel)

    def build(self, tensor_shape, name, layer):
        _grid.keep_weight_order(layer)
        self._channels = _grid.channel_count(tensor_shape, self.depthwise,
                                                   self.per_channel)
        mask = _grid.build_sparsity_mask(layer, name, tensor_shape,
                                         self.preserve_sparsity)
        return {"sparsity_mask": mask} if mask is not None else {}

    def _alpha(self, w, weights):
        axes = _grid.reduce_axes(w.shape, self.depthwise, self.per_channel)
        total = tf.reduce_sum(tf.abs(w), axis=axes)
        if "sparsity_mask" in weights:
            count = tf.reduce_sum(weights["sparsity_mask"], axis=axes)
        else:
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(w), axes)), w.dtype)
        return tf.math.divide_no_nan(total, count)

    def __call__(self, inputs, training, weights, **kwargs):
        w = inputs
        if "sparsity_mask" in weights:
            w = w * weights["sparsity_mask"]
        sign = tf.sign(w)
        inside = tf.cast(tf.abs(w) <= self.clip, w.dtype)
        sign_ste = w * inside + tf.stop_gradient(sign - w * inside)
        alpha = self._alpha(w, weights)  # (C,) or (cin, mult) for depthwise
        out = sign_ste * alpha
        if training:
            return out
        out = tf.stop_gradient(sign) * alpha
        step = tf.reshape(tf.maximum(alpha, 1e-12) / 127.0, [-1])
        return _grid.export_fake_quant(out, step, w.shape, self.depthwise)

    def cost_bits(self, quantizer_vars):
        """One sign bit per weight."""
        return 1.0

    def cost_params(self, quantizer_vars):
        """One 32-bit scale per output channel."""
        mask = (quantizer_vars or {}).get("sparsity_mask")
        if mask is not None:
            return _grid.channel_count(mask.shape, self.depthwise, self.per_channel)
        if not hasattr(self, "_channels"):
            raise ValueError("BinaryWeightQuantizer.cost_params: the quantizer "
                             "was never built; build the quantized model first.")
        return self._channels

    def get_config(self):
        return {"clip": self.clip, "depthwise": self.depthwise,
                "preserve_sparsity": self.preserve_sparsity,
                "per_channel": self.per_channel}
