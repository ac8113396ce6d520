"""CIFAR ResNets (He et al., CVPR 2016) and Wide ResNets (Zagoruyko &
Komodakis, BMVC 2016), post-activation (conv-BN-ReLU)."""
from mntk.compat import keras
from mntk.models import blocks

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
