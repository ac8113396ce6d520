"""QAT train-step time of each mntk scheme relative to tfmot's default 8-bit
QAT on the same model, and TFLite int8 vs float latency."""
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def _step_time(model, x, y, steps=20):
    from _quantization_helpers import compile_model
    compile_model(model)
    model.fit(x, y, batch_size=64, epochs=1, steps_per_epoch=3, verbose=0)
    start = time.perf_counter()
    model.fit(x, y, batch_size=64, epochs=1, steps_per_epoch=steps, verbose=0)
    return (time.perf_counter() - start) / steps


def bench_qat_step_ratio():
    import mntk.quantization as mq
    from _quantization_helpers import digits, tiny_model
    x, y = digits()
    x, y = np.concatenate([x] * 2), np.concatenate([y] * 2)
    base = _step_time(mq.quantize(tiny_model(), scheme="int8"), x, y)
    rows = [{"name": "qat_step_int8", "value": base * 1e3, "unit": "ms"}]
    for name, scheme in [("ternary", mq.TernaryScheme()), ("binary", mq.BinaryScheme()),
                         ("learned", mq.LearnedPrecisionScheme(init_bits=4))]:
        t = _step_time(mq.quantize(tiny_model(), scheme=scheme, skip=[]), x, y)
        rows.append({"name": f"qat_step_ratio_{name}", "value": t / base, "unit": "x",
                     "target": 1.3})
    return rows


def bench_tflite_latency():
    import mntk
    import mntk.quantization as mq
    from ai_edge_litert.interpreter import Interpreter
    from _quantization_helpers import digits, tiny_model
    x, _ = digits(64)
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
