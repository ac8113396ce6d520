"""Exit heads: small classifiers attached to an intermediate feature map.

Presets (each ends in a ``Dense`` producing logits, no softmax):

- ``"osi"`` (OSI-AI MicroNet entry, 3rd on CIFAR-100): depthwise 3x3 -> BN ->
  swish -> 1x1 conv -> BN -> swish -> global average pool -> Dense.
- ``"sdn"`` (Kaya, Hong, Dumitras, "Shallow-Deep Networks", ICML 2019):
  mixed pooling ``a * maxpool(x) + (1 - a) * avgpool(x)`` with a learned
  mixing weight ``a = sigmoid(alpha)`` -> Dense. (SDN pools to a small spatial
  size before its linear layer; here the pooling is global, which keeps the
  head cheap for the MicroNet count.)
- ``"linear"``: global average pool -> Dense (BranchyNet-style minimal head).

A head may also be any callable ``head(tensor, num_classes, name) -> logits``
built from Keras layers.
"""
import tensorflow as tf

from mntk.compat import keras

__all__ = ["MixedPooling2D", "osi_head", "sdn_head", "linear_head", "get_head",
           "PRESETS"]


@keras.utils.register_keras_serializable(package="mntk")
class MixedPooling2D(keras.layers.Layer):
    """Global mixed max/average pooling of SDN (Kaya et al., ICML 2019).

    ``y = a * max_hw(x) + (1 - a) * mean_hw(x)``, ``a = sigmoid(alpha)`` with
    one learned scalar ``alpha`` (initialized to 0, i.e. an even mix).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def build(self, input_shape):
        self.alpha = self.add_weight(
            name="alpha", shape=(), initializer="zeros", trainable=True)
        super().build(input_shape)

    def call(self, inputs):
        mix = tf.sigmoid(self.alpha)
        return (mix * tf.reduce_max(inputs, axis=[1, 2])
                + (1.0 - mix) * tf.reduce_mean(inputs, axis=[1, 2]))

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], input_shape[-1]])


def _require_rank(x, ranks, preset, name):
    if len(x.shape) not in ranks:
        raise ValueError(
            f"Exit head {preset!r} for {name!r} needs a feature tensor of rank "
            f"{' or '.join(map(str, ranks))}, got shape {tuple(x.shape)}. Attach "
            "the exit at a convolutional block output, or use head='linear' "
            "(which also accepts flat features) or a callable head.")


def osi_head(x, num_classes, name, bn_momentum=0.99):
    """OSI-AI head: DW3x3-BN-swish -> 1x1 conv-BN-swish -> GAP -> Dense.

    ``bn_momentum``: lower it (``functools.partial(osi_head, bn_momentum=0.9)``)
    for short runs on small data, where 0.99 leaves stale moving statistics.
    """
    _require_rank(x, (4,), "osi", name)
    channels = int(x.shape[-1])
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                     name=f"{name}_dw")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum,
                                        name=f"{name}_dw_bn")(x)
    x = keras.layers.Activation("swish", name=f"{name}_dw_swish")(x)
    x = keras.layers.Conv2D(channels, 1, use_bias=False,
                            name=f"{name}_pw")(x)
    x = keras.layers.BatchNormalization(momentum=bn_momentum,
                                        name=f"{name}_pw_bn")(x)
    x = keras.layers.Activation("swish", name=f"{name}_pw_swish")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, name=name)(x)


def sdn_head(x, num_classes, name):
    """SDN head: learned mixed global max/avg pooling -> Dense."""
    _require_rank(x, (4,), "sdn", name)
    x = MixedPooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, name=name)(x)


def linear_head(x, num_classes, name):
    """Linear head: GAP -> Dense (flat features go straight to the Dense)."""
    _require_rank(x, (2, 4), "linear", name)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    return keras.layers.Dense(num_classes, name=name)(x)


PRESETS = {"osi": osi_head, "sdn": sdn_head, "linear": linear_head}


def get_head(head):
    """Return the head builder for a preset name or a callable."""
    if callable(head):
        return head
    if isinstance(head, str) and head in PRESETS:
        return PRESETS[head]
    raise ValueError(
        f"Unknown exit head {head!r}; use one of {sorted(PRESETS)} or a callable "
        "head(tensor, num_classes, name) -> logits tensor.")


def _mixed_pooling_cost(layer, ctx):
    """MicroNet count of ``MixedPooling2D`` on an (H, W, C) input.

    max: (HW - 1) * C comparisons (counted as multiplies, like global max
    pooling); mean: C mults + (HW - 1) * C adds; sigmoid(alpha): 2 mults, 1 add;
    1 - a: 1 add; a * max + (1 - a) * avg: 2C mults + C adds. Storage: alpha.
    """
    height, width, channels = (int(d) for d in ctx.input_shapes[0])
    positions = height * width
    bits = ctx.mult_bits(*ctx.input_bits, 32.0)
    return [ctx.row("mixed_pool", bits=bits, param_bits=ctx.float_bits,
                    mult_terms=[((positions - 1) * channels + 3 * channels + 2,
                                 bits)],
                    add_terms=[((positions - 1) * channels + channels + 2,
                                ctx.accumulator_bits)])]


def _register_cost_rules():
    from mntk.cost.rules import register_rule
    register_rule(MixedPooling2D, _mixed_pooling_cost)


_register_cost_rules()
