"""OSI-AI's MicroNet 2019 CIFAR-100 network (3rd place) and its exit head,
as its code builds them (Lee-Gihun/MicroNet_OSI-AI @fb0163a: models/
EfficientNet.py, models/utils.py, models/early_exit/layers.py, Config/
reproduce1.json)."""
import math

from mntk.compat import keras
from mntk.models import blocks
from mntk.models.layers import GhostBatchNormalization, NearestUpsample

layers = keras.layers

# (kernel, repeats, in, out, expansion, stride) before the width multiplier,
# models/utils.py:196-207 ('r1_k3_s1_e1_i24_o16_se0.20', ...).
OSI_BLOCKS = ((3, 1, 24, 16, 1, 1), (3, 1, 16, 24, 6, 1), (3, 2, 24, 40, 6, 2),
              (3, 1, 40, 56, 6, 1), (3, 2, 56, 72, 6, 1), (3, 2, 72, 88, 6, 2),
              (3, 1, 88, 104, 6, 1))
MOMENTUM = 0.9    # torch's default momentum 0.1
EPSILON = 1e-5


def round_filters(filters, width):
    """EfficientNet's width rounding (models/utils.py): to a multiple of 8, never
    below 90% of ``filters * width``."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def _torch_uniform(fan_in):
    """torch's default conv/linear init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


def _pad_for(strides, kernel, name):
    # The entry's "static same" padding is computed for a 32x32 image: stride 1
    # pads k//2 on both sides, stride 2 pads one pixel after only, so 63 -> 31.
    if strides == 1:
        return None
    return layers.ZeroPadding2D(((0, kernel - 2), (0, kernel - 2)), name=f"{name}_pad")


def _bn(x, name, ghost):
    if ghost:
        return GhostBatchNormalization(num_splits=4, momentum=MOMENTUM, epsilon=EPSILON,
                                       name=name)(x)
    return layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, name=name)(x)


def _conv(x, filters, kernel, name, strides=1, bias=False):
    pad = _pad_for(strides, kernel, name)
    if pad is not None:
        x = pad(x)
    fan_in = kernel * kernel * int(x.shape[-1])
    return layers.Conv2D(filters, kernel, strides=strides,
                         padding="same" if strides == 1 else "valid", use_bias=bias,
                         kernel_initializer=_torch_uniform(fan_in),
                         bias_initializer=_torch_uniform(fan_in), name=name)(x)


def _depthwise(x, kernel, strides, name):
    pad = _pad_for(strides, kernel, name)
    if pad is not None:
        x = pad(x)
    return layers.DepthwiseConv2D(kernel, strides=strides,
                                  padding="same" if strides == 1 else "valid",
                                  use_bias=False,
                                  depthwise_initializer=_torch_uniform(kernel * kernel),
                                  name=name)(x)


def _mbconv(x, out, expansion, kernel, strides, se_ratio, drop_rate, name, ghost):
    """MBConv: [1x1 expand -> BN -> swish] -> depthwise k/s -> BN -> swish ->
    SE (squeeze to int(in * se_ratio), swish, sigmoid gate) -> 1x1 project ->
    BN -> [drop-connect, + input when stride 1 and widths match];
    the last layer is ``{name}_out``."""
    cin = int(x.shape[-1])
    hidden = cin * expansion
    y = x
    if expansion != 1:
        y = _conv(y, hidden, 1, f"{name}_expand_conv")
        y = _bn(y, f"{name}_expand_bn", ghost)
        y = layers.Activation("swish", name=f"{name}_expand_swish")(y)
    y = _depthwise(y, kernel, strides, f"{name}_dw")
    y = _bn(y, f"{name}_dw_bn", ghost)
    y = layers.Activation("swish", name=f"{name}_dw_swish")(y)
    squeeze = max(1, int(cin * se_ratio))
    g = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
    g = _conv(g, squeeze, 1, f"{name}_se_reduce", bias=True)
    g = layers.Activation("swish", name=f"{name}_se_swish")(g)
    g = _conv(g, hidden, 1, f"{name}_se_expand", bias=True)
    g = layers.Activation("sigmoid", name=f"{name}_se_sigmoid")(g)
    y = layers.Multiply(name=f"{name}_se_scale")([y, g])
    y = _conv(y, out, 1, f"{name}_project_conv")
    residual = strides == 1 and cin == out
    y = _bn(y, f"{name}_project_bn" if residual else f"{name}_out", ghost)
    if residual:
        if drop_rate > 0:
            y = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1),
                               name=f"{name}_drop")(y)
        y = layers.Add(name=f"{name}_out")([y, x])
    return y


def osi_efficientnet(input_shape=(32, 32, 3), num_classes=100, width=0.9, upsample=63,
                     head_filters=150, se_ratio=0.2, dropout=0.2, drop_connect_rate=0.2,
                     ghost_bn=True, blocks_table=OSI_BLOCKS, name="osi_efficientnet"):
    """OSI-AI's EfficientNet: 470,776 weights + biases (BN not counted) and
    117.59M ops at 63x63 with 100 classes (the entry's README table).

    NearestUpsample 32 -> ``upsample`` (63: resolution 1.4^2) -> stem 3x3/2
    conv(round(24 * width)) -> BN -> swish (31x31) -> 10 MBConv blocks
    ``block0`` .. ``block9`` (the entry's MBConvBlock[0..9]; each ends in
    ``block{i}_out``; stride 2 in blocks 2 and 7) -> 1x1 conv(round(150 *
    width) = 136) -> BN -> swish -> GAP -> Dropout(0.2) -> Dense. Widths
    at 0.9: 24 -> 16, 24, 40, 40, 48, 64, 64, 80, 80, 96. Every BN is a
    ``GhostBatchNormalization`` with 4 splits (``ghost_bn=False``: plain BN).
    Drop-connect rate 0.2 * (block index) / 10. The exit of the entry reads
    ``block4_out`` (15x15x48); see ``osi_exit_head``.

    Entry's init: torch's defaults (kernels and biases U(+-1/sqrt(fan_in)),
    fan_in = k*k for depthwise), BN momentum 0.1 in torch terms (0.9 here),
    epsilon 1e-5. Strided convs pad one pixel after (the entry's static
    padding for 32x32), so 63 -> 31 -> 15 -> 7.
    """
    if len(input_shape) != 3:
        raise ValueError(f"{name}: input_shape={tuple(input_shape)} must be (H, W, C).")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    if upsample:
        x = NearestUpsample(upsample, name="upsample")(x)
    blocks.check_input(name, tuple(x.shape[1:]), 16, 8)
    x = _conv(x, round_filters(24, width), 3, "stem_conv", strides=2)
    x = _bn(x, "stem_bn", ghost_bn)
    x = layers.Activation("swish", name="stem_swish")(x)
    plan = []
    for kernel, repeats, _, out, expansion, stride in blocks_table:
        for j in range(repeats):
            plan.append((kernel, round_filters(out, width), expansion, stride if j == 0 else 1))
    for idx, (kernel, out, expansion, stride) in enumerate(plan):
        x = _mbconv(x, out, expansion, kernel, stride, se_ratio,
                    drop_connect_rate * idx / len(plan), f"block{idx}", ghost_bn)
    x = _conv(x, round_filters(head_filters, width), 1, "head_conv")
    x = _bn(x, "head_bn", ghost_bn)
    x = layers.Activation("swish", name="head_swish")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    fan_in = int(x.shape[-1])
    outputs = layers.Dense(num_classes, kernel_initializer=_torch_uniform(fan_in),
                           bias_initializer=_torch_uniform(fan_in), name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def osi_exit_head(filters=136, ghost_bn=True):
    """The entry's exit head (models/early_exit/layers.py:16-50), as a head for
    ``mntk.early_exit.add_exits(model, at="block4_out", head=osi_exit_head())``:
    depthwise 3x3 -> BN -> swish -> 1x1 conv(``filters``) -> BN -> swish ->
    GAP -> Dense (the entry's 1x1 conv with bias on the pooled map). 20,660
    weights + biases at 48 input channels, 100 classes."""

    def head(x, num_classes, name):
        y = _depthwise(x, 3, 1, f"{name}_dw")
        y = _bn(y, f"{name}_dw_bn", ghost_bn)
        y = layers.Activation("swish", name=f"{name}_dw_swish")(y)
        y = _conv(y, filters, 1, f"{name}_pw")
        y = _bn(y, f"{name}_pw_bn", ghost_bn)
        y = layers.Activation("swish", name=f"{name}_pw_swish")(y)
        y = layers.GlobalAveragePooling2D(name=f"{name}_pool")(y)
        return layers.Dense(num_classes, kernel_initializer=_torch_uniform(filters),
                            bias_initializer=_torch_uniform(filters), name=name)(y)

    return head
