"""Which output of a multi-exit ``.tflite`` file is the final one, by structure.

A TFLite file names its outputs after the Keras output layers, and the names
sort in no useful order (a final layer ``dense`` sorts before ``exit_0``).
The final output of a multi-exit model is the one that depends on every
backbone op: here, the output whose ancestor set in the TFLite graph holds
the most ops. Exits come before it, ordered by the same count (an exit
deeper in the backbone needs more ops).
"""
import numpy as np

__all__ = ["tflite_output_order", "predict_tflite"]


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_path=str(path))


def tflite_output_order(path, interpreter=None):
    """Signature output names of ``path``, ordered shallow to deep (final last).

    Depth = number of ops the output depends on (a walk back through the
    graph from the output tensor).
    """
    interpreter = interpreter or _interpreter(path)
    signature = interpreter._get_full_signature_list()["serving_default"]
    outputs = signature["outputs"]  # name -> tensor index
    producer = {}
    for op in interpreter._get_ops_details():
        for tensor in op["outputs"]:
            producer[int(tensor)] = op
    depth = {}
    for name, tensor in outputs.items():
        seen, stack = set(), [int(tensor)]
        while stack:
            op = producer.get(stack.pop())
            if op is None or op["index"] in seen:
                continue
            seen.add(op["index"])
            stack.extend(int(t) for t in op["inputs"] if t >= 0)
        depth[name] = len(seen)
    return sorted(outputs, key=lambda n: (depth[n], n))


def predict_tflite(path, x, batch_size=256):
    """Outputs of a float-io ``.tflite`` file on ``x``, shallow to deep.

    Returns ``(names, arrays)``: ``arrays[-1]`` is the final output (one
    array for a single-output model).
    """
    interpreter = _interpreter(path)
    runner = interpreter.get_signature_runner()
    (input_name,) = interpreter.get_signature_list()["serving_default"]["inputs"]
    names = tflite_output_order(path, interpreter)
    chunks = {name: [] for name in names}
    for start in range(0, len(x), batch_size):
        result = runner(**{input_name: np.asarray(x[start:start + batch_size], np.float32)})
        for name in names:
            chunks[name].append(result[name])
    return names, [np.concatenate(chunks[name]) for name in names]
