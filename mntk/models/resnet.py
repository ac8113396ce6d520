"""CIFAR ResNets (He et al., CVPR 2016) and Wide ResNets (Zagoruyko &
Komodakis, BMVC 2016), post-activation (conv-BN-ReLU); the TTQ code's
pre-activation ResNet with option-A shortcuts."""
import math

from mntk.compat import keras
from mntk.models import blocks
from mntk.models.layers import ChannelPad

layers = keras.layers


def _basic_block(x, filters, strides, name, dropout=0.0):
    """conv3x3/s-BN-ReLU-[Dropout]-conv3x3-BN + shortcut -> ReLU.

    The shortcut is the identity, or a 1x1 conv/s + BN where the shape changes.
    """
    shortcut = x
    y = blocks.conv_bn(x, filters, 3, strides, "relu", f"{name}_1")
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = blocks.conv_bn(y, filters, 3, 1, None, f"{name}_2")
    if strides != 1 or x.shape[-1] != filters:
        shortcut = blocks.conv_bn(x, filters, 1, strides, None, f"{name}_shortcut")
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return y


def _three_stage_net(input_shape, num_classes, units, widths, name, dropout=0.0):
    blocks.check_input(name, input_shape, 4, 4)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = blocks.conv_bn(inputs, 16, 3, 1, "relu", "stem")
    for i, width in enumerate(widths, start=1):
        for j in range(units):
            x = _basic_block(x, width, 2 if (i > 1 and j == 0) else 1,
                             f"stage{i}_unit{j + 1}", dropout)
            last = j == units - 1
            x = layers.Activation("relu", name=f"block{i}_out" if last
                                  else f"stage{i}_unit{j + 1}_relu")(x)
    outputs = blocks.classifier(x, num_classes, 0.0)
    return keras.Model(inputs, outputs, name=name)


def resnet_cifar(depth=20, num_classes=10, input_shape=(32, 32, 3), name=None):
    """He et al.'s CIFAR ResNet-``depth`` (depth = 6n + 2: 20, 32, 44, 56, 110).

    3x3/16 stem, three stages of n basic blocks with 16/32/64 filters (stride 2
    at the start of stages 2 and 3), GAP, Dense logits. Stage i ends in
    ``block{i}_out``; the first conv is ``stem_conv``, the classifier ``logits``
    (TTQ keeps both in float).

    Departure: where the shape changes the shortcut is a 1x1 conv + BN
    (the paper's option B), not zero-padding (option A), because channel
    padding is not a countable layer; it adds 2,560 weights + BN. ResNet-20
    then has 274,042 parameters (0.27M in the paper).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet_cifar: depth={depth!r} must be 6n + 2 (20, 32, 44, 56, 110).")
    return _three_stage_net(input_shape, num_classes, (depth - 2) // 6, (16, 32, 64),
                            name or f"resnet{depth}")


def wide_resnet(depth=28, width=10, num_classes=100, input_shape=(32, 32, 3),
                dropout=0.0, name=None):
    """WRN-``depth``-``width`` (depth = 6n + 4), post-activation conv-BN-ReLU
    units with 16k/32k/64k filters and 1x1 conv + BN shortcuts where shapes
    change. WRN-28-10 is the MicroNet CIFAR-100 baseline (36.5M parameters).

    Departure: the original WRN is pre-activation (BN-ReLU-conv); the
    MicroNet baseline count is for conv-BN-ReLU, which this builds.
    """
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet: depth={depth!r} must be 6n + 4 (16, 22, 28, 40).")
    if width < 1:
        raise ValueError(f"wide_resnet: width={width!r} must be >= 1.")
    return _three_stage_net(input_shape, num_classes, (depth - 4) // 6,
                            (16 * width, 32 * width, 64 * width),
                            name or f"wrn{depth}_{width}", dropout)


def _preact_unit(x, filters, strides, name, first, momentum, epsilon, init):
    """Pre-activation unit (He et al., ECCV 2016) as the TTQ code writes it:
    [BN -> ReLU] (not in the very first unit, whose input is already
    BN-ReLU'd) -> conv3x3/s -> BN -> ReLU -> conv3x3, plus the input, or where
    the width doubles avg-pool 2 + zero channels on both sides (option A)."""
    y = x
    if not first:
        y = layers.BatchNormalization(momentum=momentum, epsilon=epsilon,
                                      name=f"{name}_bn1")(y)
        y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                      kernel_initializer=init(filters), name=f"{name}_conv1")(y)
    y = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name=f"{name}_bn2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer=init(filters), name=f"{name}_conv2")(y)
    shortcut = x
    cin = int(x.shape[-1])
    if strides != 1 or cin != filters:
        shortcut = layers.AveragePooling2D(strides, name=f"{name}_pool")(x)
        extra = filters - cin
        shortcut = ChannelPad(extra // 2, extra - extra // 2, name=f"{name}_pad")(shortcut)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def resnet_preact(depth=20, num_classes=10, input_shape=(32, 32, 3), name=None):
    """The TTQ code's pre-activation CIFAR ResNet-``depth`` (depth = 6n + 2)
    with option-A shortcuts (czhu95/ternarynet @1a67251,
    examples/Ternary-Net/tw-cifar10-resnet.py:56-110).

    ``stem_conv`` 3x3(16) -> BN -> ReLU; three stages of n units with 16/32/64
    filters (units ``stage{s}_unit{u}``; the first unit of stages 2 and 3 has
    stride 2 and its shortcut is avg-pool 2 + zero channels); final BN ->
    ReLU (stage 3 ends in ``block3_out``) -> GAP -> Dense ``logits``.
    Trainable parameters: 269,722 at depth 20 (the code's log counts 269,760
    with TTQ's two scales on each of the 19 ternarized layers).

    The code's init: convs N(0, sqrt(2 / (9 * out))), the Dense uniform
    +-1.43 * sqrt(3 / fan_in) (``uniform_unit_scaling(1.43)``), biases 0;
    BN decay 0.9, epsilon 1e-5. Stages 1 and 2 end in ``block1_out`` /
    ``block2_out`` (their last Add).
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet_preact: depth={depth!r} must be 6n + 2 (20, 32, 44, 56, 110).")
    blocks.check_input(name or f"preact_resnet{depth}", input_shape, 4, 4)
    units = (depth - 2) // 6
    momentum, epsilon = 0.9, 1e-5

    def init(filters):
        return keras.initializers.RandomNormal(stddev=math.sqrt(2.0 / (9 * filters)))

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, kernel_initializer=init(16),
                      name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for s, filters in enumerate((16, 32, 64), start=1):
        for u in range(units):
            x = _preact_unit(x, filters, 2 if (s > 1 and u == 0) else 1,
                             f"stage{s}_unit{u + 1}", s == 1 and u == 0, momentum, epsilon,
                             init)
            if u == units - 1 and s < 3:
                x = layers.Activation("linear", name=f"block{s}_out")(x)
    x = layers.BatchNormalization(momentum=momentum, epsilon=epsilon, name="final_bn")(x)
    x = layers.Activation("relu", name="block3_out")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    fc_init = keras.initializers.VarianceScaling(1.43 ** 2, "fan_in", "uniform")
    outputs = layers.Dense(num_classes, kernel_initializer=fc_init, name="logits")(x)
    return keras.Model(inputs, outputs, name=name or f"preact_resnet{depth}")
