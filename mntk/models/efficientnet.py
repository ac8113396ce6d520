"""EfficientNet (Tan & Le, ICML 2019): B0 for ImageNet and an MBConv net
for 32x32 CIFAR inputs (the OSI-AI entry's backbone style)."""
import math

from mntk.compat import keras
from mntk.models import blocks
from mntk.models.mobilenet import make_divisible

# (kernel, repeats, out, expansion, stride) per stage, EfficientNet-B0.
B0_STAGES = ((3, 1, 16, 1, 1), (3, 2, 24, 6, 2), (5, 2, 40, 6, 2), (3, 3, 80, 6, 2),
             (5, 3, 112, 6, 1), (5, 4, 192, 6, 2), (3, 1, 320, 6, 1))
# For 32x32: the stem and stage 2 keep the resolution (total stride 8, not 32).
CIFAR_STAGES = ((3, 1, 16, 1, 1), (3, 2, 24, 6, 1), (5, 2, 40, 6, 2), (3, 3, 80, 6, 2),
                (5, 3, 112, 6, 1), (5, 4, 192, 6, 2), (3, 1, 320, 6, 1))


def _mbconv_net(input_shape, num_classes, stages, stem_stride, width_multiplier,
                depth_multiplier, head_filters, dropout, drop_connect_rate,
                se_ratio, activation, name):
    total_stride = stem_stride
    for *_, s in stages:
        total_stride *= s
    blocks.check_input(name, input_shape, total_stride, total_stride)
    width = lambda c: make_divisible(c * width_multiplier)  # noqa: E731
    repeats = [int(math.ceil(r * depth_multiplier)) for _, r, *_ in stages]
    total_blocks, done = sum(repeats), 0
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = blocks.conv_bn(inputs, width(32), 3, stem_stride, activation, "stem")
    for i, ((kernel, _, out, expansion, stride), n) in enumerate(zip(stages, repeats),
                                                                 start=1):
        for j in range(n):
            # Stochastic depth grows linearly with depth, as in EfficientNet.
            x = blocks.inverted_residual(
                x, width(out), expansion, stride if j == 0 else 1,
                f"block{i}{chr(ord('a') + j)}", kernel_size=kernel, act=activation,
                se_ratio=se_ratio, se_base="input", se_gate="sigmoid", se_act=activation,
                drop_rate=drop_connect_rate * done / total_blocks,
                out_name=f"block{i}_out" if j == n - 1 else None)
            done += 1
    x = blocks.conv_bn(x, width(head_filters), 1, 1, activation, "head")
    outputs = blocks.classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)


def efficientnet_b0(input_shape=(224, 224, 3), num_classes=1000, dropout=0.2,
                    drop_connect_rate=0.2, name="efficientnet_b0"):
    """EfficientNet-B0 for ImageNet, logits output, no preprocessing layers.

    stem 3x3/2 (32) -> 16 MBConv blocks (swish, SE 0.25 of the block input,
    sigmoid gate) -> 1x1 conv 1280 -> GAP -> Dropout(0.2) -> Dense. 5,330,564
    Keras parameters with 1000 classes, BN moving statistics included (the
    Keras application's count less its Normalization layer's 7). Stage i ends in ``block{i}_out``. Inputs are
    expected normalized by ``mntk.data`` (the Keras application rescales
    inside the model instead); ``same`` padding replaces its explicit
    ZeroPadding before stride-2 depthwise convs (same parameters).
    """
    return _mbconv_net(input_shape, num_classes, B0_STAGES, 2, 1.0, 1.0, 1280,
                       dropout, drop_connect_rate, 0.25, "swish", name)


def efficientnet_cifar(input_shape=(32, 32, 3), num_classes=100, width_multiplier=1.0,
                       depth_multiplier=1.0, head_filters=1280, dropout=0.2,
                       drop_connect_rate=0.0, se_ratio=0.25, activation="swish",
                       name="efficientnet_cifar"):
    """EfficientNet-style MBConv net for 32x32 (the OSI-AI entry's backbone).

    B0's stages with stride 1 in the stem and stage 2 (total stride 8), so
    ``block4_out`` is 8x8x80 at 32x32 input: OSI attaches its exit head after
    block 4. Widths scale by ``width_multiplier`` (rounded to multiples of 8)
    and repeats by ``depth_multiplier`` (rounded up), as in EfficientNet.

    Departure: OSI's exact widths are not published in the facts we hold;
    shrink with ``width_multiplier`` / ``head_filters`` to reach their cost.
    """
    return _mbconv_net(input_shape, num_classes, CIFAR_STAGES, 1, width_multiplier,
                       depth_multiplier, head_filters, dropout, drop_connect_rate,
                       se_ratio, activation, name)
