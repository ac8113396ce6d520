"""Building blocks shared by the reference architectures.

Every block is made only of layers the MicroNet cost counter knows: Conv2D,
DepthwiseConv2D, Dense, BatchNormalization, Activation (relu, relu6, swish,
sigmoid, hard_sigmoid, hard_swish), GlobalAveragePooling2D, Add, Multiply,
Dropout. Names follow ``{prefix}_{part}`` so techniques can pick layers by
name (e.g. SRIP on every ``*_expand_conv`` / ``*_project_conv``).
"""
import tensorflow as tf

from mntk.compat import keras

layers = keras.layers


@keras.utils.register_keras_serializable(package="mntk")
def hard_swish(x):
    """Hard swish, x * relu6(x + 3) / 6 (Howard et al., "Searching for
    MobileNetV3", ICCV 2019). tf_keras has no built-in one; the cost counter
    reads it by name (4 mults, 1 add per element)."""
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def activation(x, kind, name):
    """An ``Activation`` layer; ``kind`` is a Keras name or ``"hard_swish"``."""
    fn = hard_swish if kind == "hard_swish" else kind
    return layers.Activation(fn, name=name)(x)


def conv_bn(x, filters, kernel_size, strides=1, act="relu", name="conv",
            momentum=0.99):
    """Conv2D (no bias, ``same`` padding) -> BN -> activation (if ``act``)."""
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                      use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    if act:
        x = activation(x, act, f"{name}_{act}")
    return x


def squeeze_excite(x, squeeze_filters, name, gate="hard_sigmoid", act="relu"):
    """SE gate: x * gate(W2 act(W1 GAP(x) + b1) + b2) (Hu et al., CVPR 2018).

    The two projections are 1x1 convs with bias on a 1x1 map, so SRIP and
    the cost counter treat them as the pointwise convs KAIST regularized.
    """
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = layers.Conv2D(squeeze_filters, 1, name=f"{name}_se_reduce")(s)
    s = activation(s, act, f"{name}_se_{act}")
    s = layers.Conv2D(channels, 1, name=f"{name}_se_expand")(s)
    s = activation(s, gate, f"{name}_se_{gate}")
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def inverted_residual(x, out_filters, expansion, strides, name, kernel_size=3,
                      act="relu6", se_ratio=0.0, se_base="expanded",
                      se_gate="hard_sigmoid", se_act="relu", drop_rate=0.0,
                      out_name=None, momentum=0.99):
    """MobileNetV2 inverted residual / EfficientNet MBConv block.

    1x1 expand (skipped when ``expansion == 1``) -> BN -> act ->
    depthwise kxk/stride -> BN -> act -> [SE] -> 1x1 project -> BN
    -> [drop-path Dropout] -> [+ input when stride 1 and widths match].

    Args:
      se_ratio: squeeze width as a fraction of the expanded width
        (``se_base="expanded"``, MobileNetV3) or of the block input
        (``se_base="input"``, EfficientNet); 0 disables SE.
      drop_rate: stochastic depth as a ``Dropout`` with
        ``noise_shape=(None, 1, 1, 1)`` on the residual branch (Huang et al.
        2016, as in EfficientNet).
      out_name: name of the block's last layer (e.g. ``"block3_out"``).
    """
    in_filters = x.shape[-1]
    hidden = int(round(in_filters * expansion))
    shortcut = x
    if expansion != 1:
        x = conv_bn(x, hidden, 1, 1, act, f"{name}_expand", momentum)
    x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same",
                               use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_dw_bn")(x)
    x = activation(x, act, f"{name}_dw_{act}")
    if se_ratio:
        base = hidden if se_base == "expanded" else in_filters
        x = squeeze_excite(x, max(1, int(base * se_ratio)), name, se_gate, se_act)
    x = layers.Conv2D(out_filters, 1, use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_project_conv")(x)
    residual = strides == 1 and in_filters == out_filters
    last = out_name if (out_name and not residual) else f"{name}_project_bn"
    x = layers.BatchNormalization(momentum=momentum, name=last)(x)
    if residual:
        if drop_rate > 0:
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                               name=f"{name}_drop")(x)
        x = layers.Add(name=out_name or f"{name}_add")([shortcut, x])
    return x


def classifier(x, num_classes, dropout, name="logits"):
    """GAP -> Dropout -> Dense logits (no softmax)."""
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(num_classes, name=name)(x)


def check_input(name, input_shape, min_size, downsampling):
    """Raise when an input cannot pass ``downsampling`` total stride."""
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape={tuple(input_shape)} must be (H, W, C).")
    h, w = input_shape[:2]
    if h is not None and w is not None and min(h, w) < min_size:
        raise ValueError(
            f"{name} downsamples by {downsampling} and needs inputs of at least "
            f"{min_size}x{min_size}, got input_shape={tuple(input_shape)}; resize the data "
            f"(e.g. mntk.data.load(..., image_size={max(min_size, 32)})).")
