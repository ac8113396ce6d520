"""TFLite export benchmarks: float vs int8 per-sample latency with LiteRT."""
import os
import tempfile
import time

import numpy as np

from mntk.compat import keras


def _digits_model():
    try:
        from mntk.models import digits_cnn
    except ImportError:  # models not available: a local digits-sized CNN
        layers = keras.layers
        inputs = keras.Input((16, 16, 1), name="image")
        x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
        x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
        x = layers.Conv2D(32, 1, activation="relu")(x)
        x = layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, layers.Dense(10, name="logits")(x),
                           name="digits_local")
    return digits_cnn(input_shape=(16, 16, 1))


def _per_sample_seconds(path, sample, invokes=400, repeats=5):
    """Median over ``repeats`` of the mean time of one batch-1 invoke."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=1)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], sample.shape)
    interpreter.allocate_tensors()
    if detail["dtype"] != np.float32:
        raise ValueError(f"{path}: expected a float input, got {detail['dtype']}")
    interpreter.set_tensor(detail["index"], sample)
    for _ in range(50):  # warm-up (delegate set-up, caches)
        interpreter.invoke()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(invokes):
            interpreter.invoke()
        times.append((time.perf_counter() - start) / invokes)
    return float(np.median(times))


def bench_tflite_latency():
    """Per-sample (batch 1, 1 thread) LiteRT latency of the digits CNN, float
    vs full-integer int8 (calibrated on random inputs: values do not change
    the kernels' speed), and the ratio int8 / float."""
    from mntk.export import to_tflite

    keras.utils.set_random_seed(0)
    model = _digits_model()
    shape = tuple(model.input_shape[1:])
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (200,) + shape).astype(np.float32)
    sample = calibration[:1]
    with tempfile.TemporaryDirectory() as tmp:
        float_file = to_tflite(model, os.path.join(tmp, "float.tflite"),
                               progress=False)
        int8_file = to_tflite(model, os.path.join(tmp, "int8.tflite"),
                              quantize="int8", representative_data=calibration,
                              progress=False)
        float_s = _per_sample_seconds(float_file.path, sample)
        int8_s = _per_sample_seconds(int8_file.path, sample)
    extra = {"model": model.name, "input_shape": list(shape)}
    return [
        {"name": "tflite_float_latency", "value": float_s * 1e6, "unit": "us/sample",
         "bytes": float_file.bytes, **extra},
        {"name": "tflite_int8_latency", "value": int8_s * 1e6, "unit": "us/sample",
         "bytes": int8_file.bytes, **extra},
        {"name": "tflite_int8_over_float_latency", "value": int8_s / float_s,
         "unit": "ratio", **extra},
        {"name": "tflite_int8_over_float_bytes",
         "value": int8_file.bytes / float_file.bytes, "unit": "ratio", **extra},
    ]
