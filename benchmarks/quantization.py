"""QAT train-step time of each mntk scheme relative to tfmot's default 8-bit
QAT on the same model, and TFLite int8 vs float latency."""
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def _step_timer(model, x, y, batch_size):
    """A function n -> seconds for n train steps of ``model`` (compiled, warm).

    Calls Keras's own train function on a repeating dataset, so the time is
    the train step alone (no ``fit`` set-up, callbacks or progress bar).
    """
    import tensorflow as tf
    from _quantization_helpers import compile_model
    compile_model(model)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0)
    iterator = iter(data.batch(batch_size, drop_remainder=True).repeat())
    train = model.make_train_function()
    for _ in range(10):  # trace, then warm up (thread pools, allocator)
        train(iterator)

    def run(steps):
        start = time.perf_counter()
        for _ in range(steps):
            logs = train(iterator)
        float(logs["loss"])  # wait for the last step
        return time.perf_counter() - start
    return run


def _digits(n=None):
    """sklearn's digits as 8x8x1 float32 images in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    y = data.target.astype("int64")
    return (x[:n], y[:n]) if n else (x, y)


def _digits_data():
    x, y = _digits()
    return np.concatenate([x] * 2), np.concatenate([y] * 2)


def qat_step_times(schemes, model_fn=None, data=None, batch_size=64, steps=5,
                   repeats=25, cost_target=False):
    """{scheme name: median seconds per QAT train step}, measured interleaved.

    ``schemes``: {name: scheme}; each gets a fresh ``model_fn()`` (default the
    tests' tiny digits CNN) quantized with it. Windows of ``steps`` steps
    alternate between the schemes ``repeats`` times, so load on the machine
    hits them alike; the medians are compared. Short windows, many of them:
    on this shared 2-core machine one window's time swings by 1.5x with the
    other users' load (measured: 8.0-13.9 ms per int8 step over 7 windows of
    10 steps), so fine interleaving and a median of many windows keep the
    ratio from following the load. ``cost_target``: learned
    schemes also carry ``CostTarget(score=...)`` (half the starting score),
    as learned-precision training does.
    """
    import mntk
    import mntk.quantization as mq
    from _quantization_helpers import tiny_model
    model_fn = model_fn or tiny_model
    x, y = data if data is not None else _digits_data()
    timers = {}
    for name, scheme in schemes.items():
        q = mq.quantize(model_fn(), scheme=scheme, skip=[] if scheme != "int8" else None)
        if cost_target and isinstance(scheme, mq.LearnedPrecisionScheme):
            q(x[:batch_size], training=True)  # calibrate ranges before counting
            score = mntk.cost.estimate(q, task="imagenet").score
            q.add_loss(mq.CostTarget(q, score=0.5 * score))
        timers[name] = _step_timer(q, x, y, batch_size)
    times = {name: [] for name in timers}
    for _ in range(repeats):
        for name, run in timers.items():
            times[name].append(run(steps) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def learned_qat_step_times(model_fn=None, data=None, batch_size=64, steps=5, repeats=25,
                           cost_target=True):
    """{"int8": s, "learned": s}: median seconds per step (``qat_step_times``)."""
    import mntk.quantization as mq
    return qat_step_times({"int8": "int8", "learned": mq.LearnedPrecisionScheme(init_bits=8)},
                          model_fn, data, batch_size, steps, repeats, cost_target)


def learned_qat_step_over_int8(model_fn=None, data=None, batch_size=64, steps=5,
                               repeats=25, cost_target=True):
    """Learned-precision QAT train step time / tfmot int8 QAT step time.

    Same model (default: the tests' tiny digits CNN), same data and batch,
    medians of interleaved windows in one process (``qat_step_times``). The
    learned step includes the ``CostTarget(score=...)`` term (``cost_target``).
    Target (issue 16): <= 1.3.
    """
    times = learned_qat_step_times(model_fn, data, batch_size, steps, repeats, cost_target)
    return times["learned"] / times["int8"]


def bench_qat_step_ratio():
    import mntk.quantization as mq
    schemes = {"int8": "int8", "ternary": mq.TernaryScheme(), "binary": mq.BinaryScheme(),
               "learned": mq.LearnedPrecisionScheme(init_bits=8)}
    times = qat_step_times(schemes)
    base = times["int8"]
    rows = [{"name": "qat_step_int8", "value": base * 1e3, "unit": "ms"}]
    for name in ("ternary", "binary", "learned"):
        rows.append({"name": f"qat_step_ratio_{name}", "value": times[name] / base,
                     "unit": "x", "target": 1.3})
    return rows


def bench_learned_qat_step_over_int8():
    """The learned QAT step with its CostTarget term, over tfmot int8 QAT."""
    times = learned_qat_step_times()
    return [{"name": "learned_qat_step_over_int8", "value": times["learned"] / times["int8"],
             "unit": "x", "target": 1.3, "int8_step_ms": times["int8"] * 1e3,
             "learned_step_ms": times["learned"] * 1e3}]


def bench_learned_qat_step_over_int8_mobilenet():
    """The same ratio on a real-sized model: MobileNetV2-0.35 at 96x96, 100
    classes, random weights and inputs, batch 16 (the digits CNN's ratio is
    dominated by per-variable work; this one by per-element work)."""
    from mntk.compat import keras

    def mobilenet():
        return keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                              weights=None, classes=100,
                                              classifier_activation=None)
    rng = np.random.default_rng(0)
    data = (rng.random((64, 96, 96, 3), dtype=np.float32), rng.integers(0, 100, 64))
    times = learned_qat_step_times(mobilenet, data, batch_size=16, steps=2, repeats=5)
    return [{"name": "learned_qat_step_over_int8", "model": "mobilenet_v2_0.35_96",
             "value": times["learned"] / times["int8"], "unit": "x", "target": 1.3,
             "int8_step_ms": times["int8"] * 1e3, "learned_step_ms": times["learned"] * 1e3}]


def bench_tflite_latency():
    import mntk
    import mntk.quantization as mq
    from ai_edge_litert.interpreter import Interpreter
    from _quantization_helpers import tiny_model
    x, _ = _digits(64)
    model = tiny_model()
    rows, times = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, m, mode in [("float", model, "none"),
                              ("ternary_int8", mq.quantize(model, mq.TernaryScheme(), skip=[]), "int8")]:
            path = mntk.export.to_tflite(m, os.path.join(tmp, name + ".tflite"),
                                         quantize=mode, progress=False).path
            it = Interpreter(model_path=path)
            it.allocate_tensors()
            inp = it.get_input_details()[0]["index"]
            start = time.perf_counter()
            for i in range(len(x)):
                it.set_tensor(inp, x[i:i + 1])
                it.invoke()
            times[name] = (time.perf_counter() - start) / len(x)
            rows.append({"name": f"tflite_latency_{name}", "value": times[name] * 1e6,
                         "unit": "us"})
    rows.append({"name": "tflite_latency_ratio_int8_vs_float",
                 "value": times["ternary_int8"] / times["float"], "unit": "x"})
    return rows
