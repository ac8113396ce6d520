"""mntk.export.signature: the frozen, variable-free SavedModel that to_tflite
converts gives the same file contents as TensorFlow's own path
(``TFLiteConverter.from_concrete_functions`` with the model's variables), the
reference here: same ops, same constant tensors and quantization parameters,
the same signature names, and bit-identical outputs."""
import numpy as np
import pytest
import tensorflow as tf

from _marks import fast_first
from _models import small_cnn
from mntk import quantization
from mntk.compat import keras
from mntk.export import signature
from mntk.export.tflite import _configured


def _reference_file(model, quantize, qat, data, sparse=False):
    """TensorFlow's conversion of the same serving function, variables kept."""
    function, _, _ = signature.serving_function(model)
    holder = tf.Module()
    holder.variables_to_keep = list(model.variables)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    return _configured(converter, model, quantize, qat, data, "float", 64, sparse)


def _mntk_file(model, quantize, qat, data, sparse=False):
    function, _, _ = signature.serving_function(model)
    with signature.saved_model(function) as directory:
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        return _configured(converter, model, quantize, qat, data, "float", 64, sparse)


def _contents(content):
    """(op names, constant tensors with their quantization and sparsity, as
    read from the flatbuffer, sorted; signatures)."""
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(bytearray(content), 0)
    constants = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            data = model.Buffers(tensor.Buffer()).DataAsNumpy() if tensor.Buffer() else 0
            if isinstance(data, int):     # no constant data: an activation tensor
                continue
            q = tensor.Quantization()
            scales = q.ScaleAsNumpy().tobytes() if q and q.ScaleLength() else b""
            zeros = q.ZeroPointAsNumpy().tobytes() if q and q.ZeroPointLength() else b""
            constants.append((tensor.Type(), tensor.ShapeAsNumpy().tobytes(), data.tobytes(),
                              scales, zeros, tensor.Sparsity() is not None))
    interpreter = tf.lite.Interpreter(model_content=content)
    ops = sorted(op["op_name"] for op in interpreter._get_ops_details())
    return ops, sorted(constants), interpreter.get_signature_list()


FLOAT32 = 0   # TensorType.FLOAT32 in the TFLite schema


def _by_value(constants):
    """Float constants as (metadata, values), in an order that pairs the same
    tensor of two files even when a value differs in its last bit."""
    rows = [((c[1], c[3], c[4], c[5]), np.frombuffer(c[2], np.float32)) for c in constants]
    return sorted(rows, key=lambda r: (r[0], tuple(np.round(r[1].astype(np.float64), 3))))


def _outputs(content, x):
    runner = tf.lite.Interpreter(model_content=content).get_signature_runner()
    return {k: v for k, v in runner(image=x).items()}


def _pruned_cnn():
    model = small_cnn(se=False)
    for layer in model.layers:
        if layer.weights and layer.weights[0].shape.rank >= 2:
            kernel = layer.weights[0].numpy()
            cut = np.quantile(np.abs(kernel), 0.8)
            layer.weights[0].assign(np.where(np.abs(kernel) < cut, 0.0, kernel))
    return model


CASES = {
    # the quantizers' straight-through estimators are custom gradients, which
    # the converter's own SavedModel traces and the frozen one leaves out
    "ternary QAT": lambda: (quantization.quantize(small_cnn(se=False), scheme=quantization.TernaryScheme()),
                            "int8", True, False),
    "float": lambda: (small_cnn(), "none", False, False),
    "post-training int8": lambda: (small_cnn(), "int8", False, False),
    "learned per-channel QAT": lambda: (quantization.quantize(
        small_cnn(se=False), scheme=quantization.LearnedPrecisionScheme(activation_per_channel=True)),
        "int8", True, False),
    "sparse float": lambda: (_pruned_cnn(), "none", False, True),
}


@pytest.mark.parametrize("case", fast_first(list(CASES), ids=list(CASES)))
def test_frozen_saved_model_converts_to_the_same_file_as_tensorflows_path(case, digits_split):
    model, quantize, qat, sparse = CASES[case]()
    x = digits_split[1][0][:32]
    if qat:
        model(x, training=True)       # activation ranges off their initial values
    data = x if quantize == "int8" and not qat else None
    ours = _mntk_file(model, quantize, qat, data, sparse)
    reference = _reference_file(model, quantize, qat, data, sparse)
    ours_ops, ours_constants, ours_signatures = _contents(ours)
    ref_ops, ref_constants, ref_signatures = _contents(reference)
    assert ours_ops == ref_ops
    assert ours_signatures == ref_signatures
    # Quantized weights, biases, scales and zero points: equal, bit for bit.
    # Float constants: equal to float32 rounding (TF folds the learned scheme's
    # per-channel clips from several variables before conversion, the converter
    # after freezing them: measured within 1 ulp, outputs bit-identical).
    assert len(ours_constants) == len(ref_constants)
    assert [c for c in ours_constants if c[0] != FLOAT32] == [
        c for c in ref_constants if c[0] != FLOAT32]
    ours_float, ref_float = (_by_value([c for c in cs if c[0] == FLOAT32])
                             for cs in (ours_constants, ref_constants))
    for (key_a, a), (key_b, b) in zip(ours_float, ref_float):
        assert key_a == key_b
        np.testing.assert_allclose(a, b, rtol=2e-7, atol=0)
    a, b = _outputs(ours, x), _outputs(reference, x)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_frozen_function_keeps_input_and_output_names():
    inputs = [keras.Input((3,), name="left"), keras.Input((2,), name="right")]
    joined = keras.layers.Concatenate()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(4, name="zeta")(joined),
                                 keras.layers.Dense(1, name="alpha")(joined)])
    function, in_names, out_names = signature.serving_function(model)
    frozen = signature.frozen(function)
    assert (in_names, out_names) == (["left", "right"], ["zeta", "alpha"])
    assert not frozen.variables
    assert [s.name for s in frozen.structured_input_signature[0]] == ["left", "right"]
    x = [np.ones((2, 3), "float32"), np.full((2, 2), 2.0, "float32")]
    got, want = frozen(*x), function(*x)
    assert sorted(got) == ["alpha", "zeta"]
    for name in got:
        np.testing.assert_array_equal(got[name].numpy(), want[name].numpy())
