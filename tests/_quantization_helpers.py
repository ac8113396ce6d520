"""Shared helpers of the quantization tests: tiny model, compile, TFLite kernels."""
import numpy as np

from mntk.compat import keras


def tiny_model(num_classes=10):
    """Every weighted layer kind: conv+BN+ReLU, depthwise+BN+ReLU, 1x1 conv+ReLU, Dense."""
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = keras.layers.ReLU(name="stem_relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(h)
    h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = keras.layers.ReLU(name="dw_relu")(h)
    h = keras.layers.Conv2D(16, 1, name="pw")(h)
    h = keras.layers.ReLU(name="pw_relu")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(16, activation="relu", name="fc")(h)
    out = keras.layers.Dense(num_classes, name="logits")(h)
    return keras.Model(x, out, name="tiny")


def compile_model(model, lr=3e-3, run_eagerly=False):
    """Adam(lr), sparse cross-entropy on logits, accuracy. ``run_eagerly``
    for a fit of a few steps, where tracing the step costs more than it."""
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], run_eagerly=run_eagerly)
    return model


def tflite_kernels(path):
    """{Keras layer name: (int8 kernel with output channels first, scales)}."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    out = {}
    for detail in interpreter.get_tensor_details():
        name = detail["name"]
        if detail["dtype"] != np.int8 or "FakeQuant" not in name:
            continue
        try:
            tensor = interpreter.get_tensor(detail["index"])
        except ValueError:
            continue
        if tensor.ndim < 2:
            continue
        layer = name.split(";")[0].split("/")[1]
        layer = layer[len("quant_"):] if layer.startswith("quant_") else layer
        if "depthwise" in name.split(";")[0]:  # (1, kh, kw, C): channels last
            tensor = np.moveaxis(tensor, -1, 0)
        out[layer] = (tensor, detail["quantization_parameters"]["scales"])
    return out
