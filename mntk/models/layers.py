"""Layers the challenge entries' networks need beyond Keras' own.

- ``GhostBatchNormalization``: batch norm over ``num_splits`` parts of each
  batch (Hoffer, Hubara, Soudry, "Train longer, generalize better", NeurIPS
  2017); the OSI-AI entry used 4 splits.
- ``NearestUpsample``: nearest-neighbour resize to a fixed size with
  PyTorch's legacy index rule ``src = floor(dst * in / out)`` (OSI-AI's
  32 -> 63 input upsampling).
- ``ChannelPad``: zero channels before and after the input (the "option A"
  ResNet shortcut of He et al., CVPR 2016, as the TTQ code writes it).
- ``KeepBranch``: returns its first input and ignores the others, so a branch
  the entry computes but never uses (KAIST's squeeze-excite on stride-2 blocks)
  stays in the model, its weights trained by the regularizers and counted.

Each registers a MicroNet cost rule: a ghost BN is a BN (folded into the
preceding kernel's bias); the other three only move values and cost nothing,
and ``mntk.quantization`` passes their input's quantization through them.
"""
import numpy as np
import tensorflow as tf

from mntk.compat import keras

__all__ = ["GhostBatchNormalization", "NearestUpsample", "ChannelPad", "KeepBranch"]


@keras.utils.register_keras_serializable(package="mntk")
class GhostBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm whose training statistics come from ``num_splits`` parts.

    Training: the batch of N examples is cut into g = min(num_splits, N)
    consecutive parts (sizes differ by at most one when g does not divide N);
    part j is normalized by its own mean m_j and (biased) variance v_j:
    ``y = gamma * (x - m_j) / sqrt(v_j + eps) + beta``. The moving statistics
    follow the means over parts, ``mean_j m_j`` and ``mean_j v_j``, with
    ``momentum`` (the OSI code keeps one running buffer per part and averages
    them before evaluation, which is the same average). Inference is a plain
    batch norm with the moving statistics, so the cost counter folds it into
    the preceding kernel like any BatchNormalization.
    """

    def __init__(self, num_splits=4, **kwargs):
        if int(num_splits) != num_splits or num_splits < 1:
            raise ValueError(f"GhostBatchNormalization {kwargs.get('name', '')!r}: "
                             f"num_splits={num_splits!r} must be a positive integer.")
        kwargs.pop("virtual_batch_size", None)
        kwargs["fused"] = False
        super().__init__(**kwargs)
        self.num_splits = int(num_splits)

    def build(self, input_shape):
        super().build(input_shape)
        if len(self.axis) != 1:
            raise ValueError(f"GhostBatchNormalization {self.name!r}: axis={self.axis} "
                             "must be a single (channel) axis.")

    def call(self, inputs, training=None):
        training = self._get_training_value(training)
        if training is False or self.num_splits == 1:
            return super().call(inputs, training=training)
        from tf_keras.src.utils import control_flow_util
        return control_flow_util.smart_cond(
            training, lambda: self._ghost(inputs),
            lambda: super(GhostBatchNormalization, self).call(inputs, training=False))

    def _ghost(self, inputs):
        x = tf.cast(inputs, self.compute_dtype)
        n = tf.shape(x)[0]
        groups = tf.minimum(tf.constant(self.num_splits), n)
        # part of example i: floor(i * g / N)
        part = (tf.range(n) * groups) // tf.maximum(n, 1)
        axis = self.axis[0] % len(x.shape)
        reduce = [a for a in range(1, len(x.shape)) if a != axis]
        channels = x.shape[axis]
        # Per-part statistics as matrix products with the (N, splits) membership
        # matrix rather than segment means and gathers: the same sums in fewer
        # graph ops, forward and gradient, and tracing them is most of what a
        # ghost-BN net's training step costs to build (the OSI smoke net's
        # train step: 7005 -> 5673 ops, 12.0 -> 8.3 s CPU to trace).
        member = tf.one_hot(part, self.num_splits, dtype=x.dtype)           # (N, S)
        sizes = tf.maximum(tf.reduce_sum(member, axis=0), 1.0)               # (S,)
        per_example = tf.concat([tf.reduce_mean(x, axis=reduce),
                                 tf.reduce_mean(tf.square(x), axis=reduce)], 1)  # (N, 2C)
        moments = tf.matmul(member / sizes, per_example, transpose_a=True)   # (S, 2C)
        mean, mean_sq = moments[:, :channels], moments[:, channels:]
        var = tf.maximum(mean_sq - tf.square(mean), 0.0)
        # each example's part statistics, broadcast over its positions
        stats = tf.matmul(member, tf.concat([mean, tf.math.rsqrt(var + self.epsilon)], 1))
        stat_shape = [n] + [x.shape[a] if a == axis else 1 for a in range(1, len(x.shape))]
        y = (x - tf.reshape(stats[:, :channels], stat_shape)) * tf.reshape(
            stats[:, channels:], stat_shape)
        if self.scale:
            y = y * self.gamma
        if self.center:
            y = y + self.beta
        # the moving statistics follow the mean over the g parts (the empty
        # columns, when N < splits, hold zeros)
        g = tf.cast(groups, x.dtype)
        self.add_update(self._assign_moving_average(
            self.moving_mean, tf.reduce_sum(mean, axis=0) / g, self.momentum, None))
        self.add_update(self._assign_moving_average(
            self.moving_variance, tf.reduce_sum(var, axis=0) / g, self.momentum, None))
        return y

    def get_config(self):
        config = super().get_config()
        config["num_splits"] = self.num_splits
        config.pop("fused", None)
        return config


@keras.utils.register_keras_serializable(package="mntk")
class NearestUpsample(keras.layers.Layer):
    """Nearest-neighbour resize of an (H, W, C) map to ``size`` = (H', W').

    Output pixel (i, j) copies input pixel (floor(i * H / H'), floor(j * W / W')):
    PyTorch's ``nn.Upsample(mode="nearest")`` rule, which OSI-AI used for
    32 -> 63 (``tf.image.resize`` with half-pixel centers picks other pixels).
    Built from two gathers, so TFLite runs it as GATHER ops.
    """

    quantize_passthrough = True  # mntk.quantization: moves values, no quantizer

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        size = (size, size) if np.isscalar(size) else tuple(size)
        if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
            raise ValueError(f"NearestUpsample {self.name!r}: size={size!r} must be a "
                             "positive int or a pair of them.")
        self.size = tuple(int(s) for s in size)

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            raise ValueError(f"NearestUpsample {self.name!r} needs a known input height "
                             f"and width, got input shape {tuple(input_shape)}.")
        self._rows = tf.constant(np.arange(self.size[0]) * h // self.size[0], tf.int32)
        self._cols = tf.constant(np.arange(self.size[1]) * w // self.size[1], tf.int32)
        super().build(input_shape)

    def call(self, inputs):
        return tf.gather(tf.gather(inputs, self._rows, axis=1), self._cols, axis=2)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape).as_list()
        return tf.TensorShape([input_shape[0], *self.size, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "size": list(self.size)}


@keras.utils.register_keras_serializable(package="mntk")
class ChannelPad(keras.layers.Layer):
    """Zero channels around the input: ``[0]*before ++ x ++ [0]*after``
    on the last axis (the TTQ code's ``tf.pad`` of the option-A shortcut)."""

    quantize_passthrough = True  # mntk.quantization: moves values, no quantizer

    def __init__(self, before, after, **kwargs):
        super().__init__(**kwargs)
        if int(before) != before or int(after) != after or before < 0 or after < 0:
            raise ValueError(f"ChannelPad {self.name!r}: before={before!r}, after={after!r} "
                             "must be non-negative integers.")
        self.before, self.after = int(before), int(after)

    def call(self, inputs):
        pads = [[0, 0]] * (len(inputs.shape) - 1) + [[self.before, self.after]]
        return tf.pad(inputs, pads)

    def compute_output_shape(self, input_shape):
        shape = tf.TensorShape(input_shape).as_list()
        shape[-1] = None if shape[-1] is None else shape[-1] + self.before + self.after
        return tf.TensorShape(shape)

    def get_config(self):
        return {**super().get_config(), "before": self.before, "after": self.after}


@keras.utils.register_keras_serializable(package="mntk")
class KeepBranch(keras.layers.Layer):
    """``[x, *unused] -> x``: keeps a computed-but-unused branch in the graph.

    KAIST's stride-2 blocks compute their squeeze-excite gate and drop it; with
    this layer the gate's convs stay model weights (regularized, pruned and
    counted as in the entry), while the output is unchanged.
    """

    quantize_passthrough = True  # mntk.quantization: moves values, no quantizer

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) < 2:
            raise ValueError(f"KeepBranch {self.name!r} takes a list [x, unused, ...].")
        return tf.identity(inputs[0])

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def _register_cost_rules():
    from mntk.cost.rules import free_rule, register_rule
    for cls in (NearestUpsample, ChannelPad, KeepBranch):
        register_rule(cls, free_rule, passes_bits=True)


_register_cost_rules()
