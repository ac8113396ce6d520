"""MobileNet-family nets for 32x32 inputs: KAIST's MicroNet entry and a
MobileNetV2 for benchmarks."""
from mntk.compat import keras
from mntk.models import blocks

# (out channels, repeats, first stride) per stage, as listed for the KAIST
# MicroNet entry (2nd on CIFAR-100, NeurIPS 2019).
KAIST_STAGES = ((16, 2, 1), (32, 1, 2), (32, 1, 1), (48, 3, 1), (72, 1, 2),
                (72, 4, 1), (80, 1, 2), (88, 2, 1), (106, 1, 1))

# MobileNetV2 (Sandler et al., CVPR 2018) (expansion, out, repeats, stride),
# with the first two strides set to 1 for 32x32 inputs.
MOBILENET_V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value, divisor=8):
    """Round a channel count to a multiple of ``divisor``, never below 90% of it
    (the MobileNet convention)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _letter(j):
    return chr(ord("a") + j)


def kaist_mobilenet(input_shape=(32, 32, 3), num_classes=100, expansion=3,
                    se_ratio=0.25, dropout=0.3, activation="hard_swish",
                    stem_filters=32, stages=KAIST_STAGES, head_filters=0,
                    name="kaist_mobilenet"):
    """KAIST's MobileNetV3-like CIFAR-100 net (MicroNet 2019, 80.07% top-1).

    stem 3x3/32 conv-BN-hard-swish, then inverted-residual blocks (1x1
    expand x``expansion`` -> depthwise 3x3 -> SE (squeeze to ``se_ratio`` of
    the expanded width, ReLU, hard-sigmoid gate) -> 1x1 project -> BN, residual
    when shapes match) with (out, repeats, stride) from ``KAIST_STAGES``,
    then GAP -> Dropout(0.3) -> Dense logits. Stage i's blocks are named
    ``block{i}a``, ``block{i}b``..., its last layer ``block{i}_out``.

    Departures: the entry's kernel sizes per block and head are not in the
    facts we hold, so every depthwise kernel is 3x3 and there is no 1x1 head
    conv unless ``head_filters`` > 0; the SE gate is Keras' hard_sigmoid
    (0.2x + 0.5, clipped), not relu6(x + 3) / 6.
    """
    total_stride = 1
    for _, _, s in stages:
        total_stride *= s
    blocks.check_input(name, input_shape, max(2 * total_stride, 4), total_stride)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = blocks.conv_bn(inputs, stem_filters, 3, 1, activation, "stem")
    for i, (out, repeats, stride) in enumerate(stages, start=1):
        for j in range(repeats):
            x = blocks.inverted_residual(
                x, out, expansion, stride if j == 0 else 1, f"block{i}{_letter(j)}",
                act=activation, se_ratio=se_ratio, se_base="expanded",
                se_gate="hard_sigmoid", se_act="relu",
                out_name=f"block{i}_out" if j == repeats - 1 else None)
    if head_filters:
        x = blocks.conv_bn(x, head_filters, 1, 1, activation, "head")
    outputs = blocks.classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_v2_cifar(input_shape=(32, 32, 3), num_classes=100, width_multiplier=0.5,
                       dropout=0.2, stages=MOBILENET_V2_STAGES, head_filters=1280,
                       name="mobilenet_v2_cifar"):
    """MobileNetV2 (Sandler et al. 2018) for 32x32: stem 3x3/32 stride 1,
    ReLU6 inverted residuals, 1x1 head conv (``head_filters``, widened only when
    ``width_multiplier`` > 1, as in the paper), GAP, Dropout, Dense logits.

    Widths are ``make_divisible(c * width_multiplier)``. Stage i ends in
    ``block{i}_out``. The default 0.5 width keeps benchmark steps cheap.
    """
    total_stride = 1
    for *_, s in stages:
        total_stride *= s
    blocks.check_input(name, input_shape, max(2 * total_stride, 4), total_stride)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = blocks.conv_bn(inputs, make_divisible(32 * width_multiplier), 3, 1, "relu6", "stem")
    for i, (t, c, n, s) in enumerate(stages, start=1):
        out = make_divisible(c * width_multiplier)
        for j in range(n):
            x = blocks.inverted_residual(
                x, out, t, s if j == 0 else 1, f"block{i}{_letter(j)}", act="relu6",
                out_name=f"block{i}_out" if j == n - 1 else None)
    head = make_divisible(head_filters * max(1.0, width_multiplier))
    x = blocks.conv_bn(x, head, 1, 1, "relu6", "head")
    outputs = blocks.classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)
