"""Small models shared by the tests (the trained ones are fixtures in conftest.py)."""
from mntk.compat import keras

layers = keras.layers


def small_cnn(name="small_cnn", se=True):
    """Conv-BN-ReLU, depthwise-BN-ReLU, SE (GAP, 1x1, hard_sigmoid, Multiply),
    1x1 convs (one with 32x48 = 1536 weights, above the converter's 1024-element
    threshold for dynamic-range quantization), GAP, Dense; 8x8x1 -> 10 logits."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)
    x = layers.ReLU()(x)
    if se:
        s = layers.GlobalAveragePooling2D(keepdims=True)(x)
        s = layers.Conv2D(4, 1, activation="relu")(s)
        s = layers.Conv2D(16, 1, activation="hard_sigmoid")(s)
        x = layers.Multiply()([x, s])
    x = layers.Conv2D(32, 1, activation="relu")(x)
    x = layers.Conv2D(48, 1, activation="relu", name="wide_pw")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name=name)


def residual_backbone():
    """8x8x1 -> stem conv-BN-ReLU (block1_out) -> residual block whose skip
    crosses an exit placed at ``block2_inner`` -> GAP -> 10 logits."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(name="block1_out")(x)
    y = layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_inner")(x)
    y = layers.Conv2D(16, 3, padding="same", name="block2_conv")(y)
    x = layers.Add(name="block2_out")([x, y])
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x))


def compile_classifier(model, lr=1e-2):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model
