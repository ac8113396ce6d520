"""What went wrong in a TFLite conversion, named by Keras layer: the ops the
converter rejected, and the ops an int8 file still computes in float."""
import re

import numpy as np

from mntk.compat import keras


def iter_layers(model):
    """All layers of ``model``, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)


def float_ops(flatbuffer, model):
    """[(op, layer or None)] of the ops that compute in float32 in a TFLite file.

    The (de)quantize ops at float inputs/outputs are not counted.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    interpreter = Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    found = []
    for op in interpreter._get_ops_details():  # private: LiteRT has no public op list
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        indices = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(tensors[i]["dtype"] == np.float32 for i in indices):
            names = [tensors[i]["name"] for i in op["outputs"] if i >= 0]
            layer = next((lay for lay in (_layer_for(n, model) for n in names) if lay),
                         None)
            found.append((op["op_name"], layer))
    return found


def _layer_for(op_location, model):
    """The Keras layer name found in a converter error location, or None."""
    layer_names = {layer.name for layer in iter_layers(model)}
    for part in re.split(r"[/@\"]", op_location):
        if part in layer_names:
            return part
    return None


def describe_converter_error(error, model):
    """'op X in layer Y' lines for each op the converter reports."""
    found = []
    for data in getattr(error, "errors", None) or []:
        op = getattr(getattr(data, "operator", None), "name", "") or "?"
        layer = None
        for call in getattr(getattr(data, "location", None), "call", []):
            layer = _layer_for(getattr(call, "name", ""), model)
            if layer:
                break
        found.append((op, layer))
    return [f"op {op} in layer {layer!r}" if layer else f"op {op} (layer not identified)"
            for op, layer in dict.fromkeys(found)]


def tensor_summary(flatbuffer):
    """``{"sparse": n, "types": {type name: count}}`` of a TFLite file's tensors.

    ``sparse`` counts tensors stored in the TFLite sparse format (a
    ``SparsityParameters`` table: traversal order, block map and per-dimension
    CSR-like segments/indices; converter option
    ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``).
    """
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(bytearray(flatbuffer), 0)
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sparse, types = 0, {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            sparse += tensor.Sparsity() is not None
            name = names.get(tensor.Type(), str(tensor.Type()))
            types[name] = types.get(name, 0) + 1
    return {"sparse": sparse, "types": types}


def prepare_error(flatbuffer, num_threads=1):
    """None if LiteRT prepares and runs ``flatbuffer`` with its default delegate
    (XNNPACK) on ``num_threads`` threads, else the error's first line."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_content=bytes(flatbuffer),
                                  num_threads=num_threads)
        interpreter.allocate_tensors()
        for d in interpreter.get_input_details():
            interpreter.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        interpreter.invoke()
    except (RuntimeError, ValueError) as e:
        return " ".join(str(e).split())[:300] or type(e).__name__
    return None
