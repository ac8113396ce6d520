"""KAIST's MicroNet 2019 CIFAR-100 network ("ver1", 2nd place), as its code
builds it (Kthyeon/KAIST-AI-NeurIPS2019-MicroNet-2nd-place-solution @9f71fb7,
Models/MicroNet.py)."""
import math

from mntk.compat import keras
from mntk.models import blocks
from mntk.models.layers import KeepBranch

layers = keras.layers

# (expansion, out, repeats, stride), Models/MicroNet.py:125-133 ("ver1").
KAIST_BLOCKS = ((3, 16, 2, 1), (3, 32, 1, 2), (3, 32, 1, 1), (3, 48, 3, 1), (3, 72, 1, 2),
                (3, 72, 4, 1), (3, 80, 1, 2), (3, 88, 2, 1), (3, 106, 1, 1))
MOMENTUM = 0.99   # torch momentum 0.01
EPSILON = 1e-5    # torch's BatchNorm2d default


def _conv_init(kernel, filters):
    """The entry's conv init, N(0, sqrt(2 / (k * k * out))) (:165-184)."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (kernel * kernel * filters)))


def _conv(x, filters, kernel, name, strides=1, bias=False):
    if strides != 1:
        # torch's padding=1 pads both sides; Keras "same" would pad only after
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=strides,
                         padding="same" if strides == 1 else "valid", use_bias=bias,
                         kernel_initializer=_conv_init(kernel, filters),
                         bias_initializer="zeros", name=name)(x)


def _bn(x, name):
    return layers.BatchNormalization(momentum=MOMENTUM, epsilon=EPSILON, name=name)(x)


def _block(x, out, expansion, strides, name, se_ratio, out_name):
    """expand 1x1 -> BN -> h-swish -> depthwise 3x3/s -> BN -> h-swish ->
    project 1x1 -> BN -> SE gate g on the block output ->
    ``y * g + shortcut`` (stride 1) or ``y`` (stride 2: the gate is computed
    and dropped, Models/MicroNet.py:93-98)."""
    cin = int(x.shape[-1])
    planes = int(expansion * cin)
    y = _conv(x, planes, 1, f"{name}_expand_conv")
    y = _bn(y, f"{name}_expand_bn")
    y = blocks.activation(y, "hard_swish", f"{name}_expand_hard_swish")
    if strides != 1:
        y = layers.ZeroPadding2D(1, name=f"{name}_dw_pad")(y)
    y = layers.DepthwiseConv2D(
        3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
        depthwise_initializer=_conv_init(3, planes), name=f"{name}_dw")(y)
    y = _bn(y, f"{name}_dw_bn")
    y = blocks.activation(y, "hard_swish", f"{name}_dw_hard_swish")
    y = _conv(y, out, 1, f"{name}_project_conv")
    y = _bn(y, f"{name}_project_bn")
    squeeze = int(out * se_ratio)
    g = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(y)
    g = _conv(g, squeeze, 1, f"{name}_se_reduce", bias=True)
    g = blocks.activation(g, "hard_swish", f"{name}_se_hard_swish")
    g = _conv(g, out, 1, f"{name}_se_expand", bias=True)
    g = blocks.activation(g, "sigmoid", f"{name}_se_sigmoid")
    if strides != 1:
        return KeepBranch(name=out_name or f"{name}_out")([y, g])
    y = layers.Multiply(name=f"{name}_se_scale")([y, g])
    shortcut = x
    if cin != out:
        shortcut = _conv(x, out, 1, f"{name}_shortcut_conv")
        shortcut = _bn(shortcut, f"{name}_shortcut_bn")
    return layers.Add(name=out_name or f"{name}_add")([y, shortcut])


def kaist_micronet(input_shape=(32, 32, 3), num_classes=100, blocks_table=KAIST_BLOCKS,
                   stem_filters=32, se_ratio=0.25, dropout=0.3, name="kaist_micronet"):
    """KAIST's MicroNet ("ver1"): 451,758 weights + biases (BN not counted)
    with 100 classes; 80.07% top-1 on CIFAR-100 at 60% sparsity.

    stem 3x3/1 conv(32) -> BN -> h-swish; blocks from ``blocks_table``
    ((expansion, out, repeats, first stride); expanded width
    ``int(expansion * in)``); GAP -> Dropout(0.3) -> Dense. Blocks are
    ``block{i}{a,b,...}`` for row i (1-based) of the table, row i ends in
    ``block{i}_out``. SE: GAP -> 1x1 conv(int(0.25 out), bias) -> h-swish ->
    1x1 conv(out, bias) -> sigmoid, on the block output. Shortcut: identity,
    or 1x1 conv + BN where a stride-1 block changes width; none at stride 2.

    Entry's init and BN: convs N(0, sqrt(2 / (k*k*out))), biases 0, Dense
    N(0, 0.01), BN momentum 0.01 in torch terms (0.99 here), epsilon 1e-5.
    Stride-2 depthwise convs pad one pixel on every side as torch does.
    """
    blocks.check_input(name, input_shape, 8, 8)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv(inputs, stem_filters, 3, "stem_conv")
    x = _bn(x, "stem_bn")
    x = blocks.activation(x, "hard_swish", "stem_hard_swish")
    for i, (expansion, out, repeats, stride) in enumerate(blocks_table, start=1):
        for j in range(repeats):
            last = j == repeats - 1
            x = _block(x, out, expansion, stride if j == 0 else 1,
                       f"block{i}{chr(ord('a') + j)}", se_ratio,
                       f"block{i}_out" if last else None)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(
        stddev=0.01), bias_initializer="zeros", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
