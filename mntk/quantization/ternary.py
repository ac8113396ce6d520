"""Trained Ternary Quantization (Zhu, Han, Mao, Dally, ICLR 2017, arXiv 1612.01064).

Per layer: ``delta = t * max|w|`` (no gradient), and the effective kernel is

    w_t = +Wp  if w > delta,   0  if |w| <= delta,   -Wn  if w < -delta

with Wp, Wn learned scalars. Gradients: the latent weight ``w`` receives the
incoming gradient ``g`` scaled by Wp / 1 / Wn in the three regions; Wp and Wn
get theirs from autodiff (``dL/dWp = sum g over w > delta``,
``dL/dWn = -sum g over w < -delta``; the paper's printed sign for Wn is wrong).

For exact int8 export, Wp and Wn are snapped (straight-through) to the grid of
step ``s = max(Wp, Wn) / 127``, so the TFLite kernel holds exactly the three
integers {-round(Wn/s), 0, +round(Wp/s)}.

The official code (czhu95/ternarynet ternary.py:30-53) starts Wp = Wn = 1.0
(``init="ones"``) and weight-decays them like the kernels: its L2 regex
matches every ``.../W`` variable, the scales included (``decay_scales=True``:
``mntk.regularizers.apply_l2(on="kernels")`` then adds
``coefficient / 2 * (Wp^2 + Wn^2)`` per layer).
"""
import numpy as np
import tensorflow as tf

from mntk.compat import keras
from mntk.quantization import _grid

from mntk.quantization._grid import Quantizer as _Quantizer


@keras.utils.register_keras_serializable(package="mntk")
class TernaryWeightQuantizer(_Quantizer):
    """TTQ weight quantizer (a tfmot ``Quantizer``).

    Args:
      threshold: t in ``delta = t * max|w|`` (paper: 0.05).
      init: "mean" (Wp, Wn start at the mean magnitude of the weights above
        / below +-delta) or "ones" (1.0, as in the paper's default and the
        official code).
      decay_scales: Wp and Wn count as kernels for the coupled L2 of
        ``mntk.regularizers.apply_l2(on="kernels")``, as the official code
        decays them. (``on="all"`` and ``"no_biases"`` cover them either way.)
      preserve_sparsity: multiply by a stored mask of the weight's zeros at
        quantize time, so a pruned model stays pruned.
      snap_to_int8: snap Wp, Wn onto the int8 grid (needed for exact export).
      depthwise: the kernel is a DepthwiseConv2D kernel (channels = cin*mult).
    """

    def __init__(self, threshold=0.05, init="mean", preserve_sparsity=True,
                 snap_to_int8=True, depthwise=False, decay_scales=False):
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(
                f"TernaryWeightQuantizer: threshold={threshold!r} must be in "
                "[0, 1); TTQ uses 0.05.")
        if init not in ("mean", "ones"):
            raise ValueError(
                f"TernaryWeightQuantizer: init={init!r}; use 'mean' or 'ones'.")
        self.threshold = float(threshold)
        self.init = init
        self.preserve_sparsity = bool(preserve_sparsity)
        self.snap_to_int8 = bool(snap_to_int8)
        self.depthwise = bool(depthwise)
        self.decay_scales = bool(decay_scales)

    def build(self, tensor_shape, name, layer):
        _grid.keep_weight_order(layer)
        wp = layer.add_weight(name + "_wp", shape=(),
                              initializer=keras.initializers.Constant(1.0),
                              trainable=True)
        wn = layer.add_weight(name + "_wn", shape=(),
                              initializer=keras.initializers.Constant(1.0),
                              trainable=True)
        if self.decay_scales:
            # read by mntk.regularizers.l2 (a variable's name cannot say it:
            # tfmot names the scales after the kernel, "kernel_wp")
            wp._mntk_l2_as_kernel = wn._mntk_l2_as_kernel = True
        mask = _grid.build_sparsity_mask(layer, name, tensor_shape,
                                         self.preserve_sparsity)
        value = _grid.initial_value(layer, name)
        if self.init == "mean" and value is not None:
            with tf.init_scope():
                w = value.numpy()
                if mask is not None:
                    w = w * mask.numpy()
                delta = self.threshold * np.abs(w).max()
                fallback = float(np.abs(w).mean()) or 1.0
                pos, neg = w[w > delta], -w[w < -delta]
                wp.assign(float(pos.mean()) if pos.size else fallback)
                wn.assign(float(neg.mean()) if neg.size else fallback)
        result = {"wp": wp, "wn": wn}
        if mask is not None:
            result["sparsity_mask"] = mask
        return result

    def _scales(self, weights):
        # abs(): Wp, Wn are magnitudes; a step that drove one negative must not
        # flip the sign of a whole region.
        wp, wn = tf.abs(weights["wp"]), tf.abs(weights["wn"])
        if not self.snap_to_int8:
            return wp, wn, None
        step = tf.stop_gradient(tf.maximum(tf.maximum(wp, wn), 1e-12) / 127.0)
        wp = wp + tf.stop_gradient(tf.round(wp / step) * step - wp)
        wn = wn + tf.stop_gradient(tf.round(wn / step) * step - wn)
        return wp, wn, step

    def __call__(self, inputs, training, weights, **kwargs):
        w = inputs
        if "sparsity_mask" in weights:
            w = w * weights["sparsity_mask"]
        delta = tf.stop_gradient(self.threshold * tf.reduce_max(tf.abs(w)))
        pos = tf.cast(w > delta, w.dtype)
        neg = tf.cast(w < -delta, w.dtype)
        wp, wn, step = self._scales(weights)
        ternary = wp * pos - wn * neg
        # Gradient path for the latent weight: d(out)/dw = Wp / 1 / Wn; the
        # term is exactly zero in the forward pass.
        grad_scale = tf.stop_gradient(wp * pos + (1.0 - pos - neg) + wn * neg)
        latent = w * grad_scale
        out = ternary + (latent - tf.stop_gradient(latent))
        if training or step is None:
            return out
        if w.shape.rank == 4:
            # Convs need per-channel fake-quant for the converter to fold BN
            # into int8 weights; every channel shares the one TTQ step.
            channels = _grid.channel_count(w.shape, self.depthwise)
            step = tf.fill([channels], step)
            return _grid.export_fake_quant(ternary, step, w.shape, self.depthwise)
        return _grid.export_fake_quant(ternary, step)

    # --- cost protocol (read by mntk.cost) ---------------------------------
    def cost_bits(self, quantizer_vars):
        """A sign bit per nonzero; the zero mask is counted by the sparsity rule."""
        return 1.0

    def cost_params(self, quantizer_vars):
        """Wp and Wn: two 32-bit values at inference."""
        return 2

    def get_config(self):
        return {"threshold": self.threshold, "init": self.init,
                "preserve_sparsity": self.preserve_sparsity,
                "snap_to_int8": self.snap_to_int8, "depthwise": self.depthwise,
                "decay_scales": self.decay_scales}
