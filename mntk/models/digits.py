"""A tiny CNN for the bundled 8x8 digits (upscaled), exercising every layer kind.

The net is the demo's model and the test bed of every technique: it holds a
Conv2D+BN+ReLU stem, a depthwise-separable block (Howard et al. 2017,
MobileNet), inverted-residual blocks with squeeze-excite (Sandler et al. 2018,
MobileNetV2; Hu et al. 2018, SENet; hard-sigmoid gate as in Howard et al.
2019, MobileNetV3), global average pooling, dropout and a Dense classifier.
Each block's last layer is named ``block{i}_out`` so early exits can be
attached by name.
"""
from mntk.compat import keras
from mntk.models.blocks import squeeze_excite

layers = keras.layers


def _conv_bn(x, filters, kernel_size, strides, activation, name):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                      use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    if activation is not None:
        x = layers.Activation(activation, name=f"{name}_{activation}")(x)
    return x


def digits_cnn(input_shape=(16, 16, 1), num_classes=10, width=16,
               name="digits_cnn", dropout=0.2):
    """Small functional CNN with logits output (no softmax).

    Layout (w = ``width``; shapes for a 16x16 input):

    - stem: 3x3 Conv2D(w) -> BN -> ReLU                          16x16xw
    - block1 (depthwise separable): DW 3x3 -> BN -> ReLU ->
      1x1 Conv2D(2w) -> BN -> ReLU (``block1_out``)               16x16x2w
    - block2 (inverted residual, stride 2, expansion 3, SE):
      1x1 expand(6w) -> BN -> ReLU -> DW 3x3/2 -> BN -> ReLU -> SE ->
      1x1 project(2w) -> BN (``block2_out``)                      8x8x2w
    - block3 (same, stride 1): ... -> residual Add (``block3_out``)  8x8x2w
    - GAP -> Dropout -> Dense(num_classes) named ``logits``.

    With w=16, 10 classes, 1 channel: 26,650 parameters. Trains to about 98%
    test accuracy on digits at 16x16 in 10 epochs (Adam 1e-3, batch 32);
    BN momentum is 0.9 because a 1.3k-image data set gives few steps per
    epoch, and stale moving statistics otherwise wreck evaluation.
    """
    if len(input_shape) != 3 or min(input_shape[:2]) < 4:
        raise ValueError(
            f"digits_cnn needs an (H, W, C) input of at least 4x4, got "
            f"input_shape={tuple(input_shape)}; upscale the images (e.g. "
            "mntk.data.digits(image_size=16)).")
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = _conv_bn(inputs, width, 3, 1, "relu", "stem")

    # block1: depthwise separable
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                               name="block1_dw")(x)
    x = layers.BatchNormalization(momentum=0.9, name="block1_dw_bn")(x)
    x = layers.Activation("relu", name="block1_dw_relu")(x)
    x = layers.Conv2D(2 * width, 1, use_bias=False, name="block1_pw_conv")(x)
    x = layers.BatchNormalization(momentum=0.9, name="block1_pw_bn")(x)
    x = layers.Activation("relu", name="block1_out")(x)

    x = _inverted_residual(x, 2 * width, expansion=3, strides=2, name="block2")
    x = _inverted_residual(x, 2 * width, expansion=3, strides=1, name="block3")

    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _inverted_residual(x, out_filters, expansion, strides, name):
    in_filters = x.shape[-1]
    hidden = in_filters * expansion
    shortcut = x
    x = _conv_bn(x, hidden, 1, 1, "relu", f"{name}_expand")
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same",
                               use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_dw_bn")(x)
    x = layers.Activation("relu", name=f"{name}_dw_relu")(x)
    x = squeeze_excite(x, max(1, hidden // 4), name)
    x = layers.Conv2D(out_filters, 1, use_bias=False,
                      name=f"{name}_project_conv")(x)
    residual = strides == 1 and in_filters == out_filters
    x = layers.BatchNormalization(
        momentum=0.9, name=f"{name}_project_bn" if residual else f"{name}_out")(x)
    if residual:
        x = layers.Add(name=f"{name}_out")([shortcut, x])
    return x
