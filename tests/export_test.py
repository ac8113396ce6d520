"""Tests of mntk.export: to_tflite (float, dynamic, int8, QAT int8) and verify."""
import os

import numpy as np
import pytest
import tensorflow as tf

from mntk.compat import keras
from mntk import export
from mntk.export.verify import dequantize_output, quantize_input
from _models import compile_classifier, small_cnn
from _marks import fast_first

layers = keras.layers


def _fit(model, train, epochs):
    compile_classifier(model)
    model.fit(*train, epochs=epochs, batch_size=64, verbose=0)
    return model


def _ops_and_tensors(path):
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=str(path))
    ops = [d["op_name"] for d in interpreter._get_ops_details()]
    return ops, interpreter.get_tensor_details()


def test_float_export_matches_keras_exactly(trained_cnn, digits_split, tmp_path):
    path = tmp_path / "new" / "dir" / "float.tflite"  # parents do not exist
    result = export.to_tflite(trained_cnn, path, progress=False)
    assert result.path == str(path) and result.quantize == "none"
    assert result.bytes == os.path.getsize(path)
    assert result.output_names == ("logits",) and result.input_names == ("image",)
    parity = export.verify(path, trained_cnn, digits_split[1], batch_size=100, progress=True)
    assert parity.samples == len(digits_split[1][0])  # 6 batches, the last one short
    assert parity.agreement == 1.0
    assert parity.max_abs_diff < 1e-4
    assert parity.accuracy_tflite == parity.accuracy_keras
    assert parity.accuracy_keras > 0.85  # the fixture did learn something
    _, tensors = _ops_and_tensors(path)
    assert not any(t["dtype"] == np.int8 for t in tensors)


@pytest.mark.slow
def test_dynamic_export_stores_int8_weights(trained_cnn, digits_split, tmp_path):
    float_file = export.to_tflite(trained_cnn, tmp_path / "f.tflite", progress=False)
    result = export.to_tflite(trained_cnn, tmp_path / "d.tflite", quantize="dynamic",
                              progress=False)
    _, tensors = _ops_and_tensors(result.path)
    int8_sizes = [int(np.prod(t["shape"])) for t in tensors if t["dtype"] == np.int8]
    assert 32 * 48 in int8_sizes  # the wide 1x1 kernel is stored int8
    assert result.bytes < float_file.bytes
    parity = export.verify(result.path, trained_cnn, digits_split[1])
    assert parity.agreement >= 0.98
    assert 0 < parity.max_abs_diff  # activations are quantized on the fly


def _as_dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(50)


def _single_samples(x, y):
    return (sample for sample in x)


@pytest.mark.parametrize("form", fast_first([lambda x, y: x, _as_dataset, _single_samples],
                                             ids=["numpy", "dataset_xy", "generator_single"]))
def test_int8_export_is_integer_and_agrees(trained_cnn, digits_split, tmp_path, form):
    (x_train, y_train), test = digits_split
    result = export.to_tflite(trained_cnn, tmp_path / "q.tflite", quantize="int8",
                              representative_data=form(x_train[:300], y_train[:300]),
                              progress=False)
    assert result.float_ops == ()
    ops, tensors = _ops_and_tensors(result.path)
    by_index = {t["index"]: t for t in tensors}
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=result.path)
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MUL"):
            assert all(by_index[i]["dtype"] == np.int8 for i in op["inputs"][:2]), op
    parity = export.verify(result.path, trained_cnn, test)
    assert parity.agreement >= 0.97
    assert abs(parity.accuracy_tflite - parity.accuracy_keras) <= 0.02


def test_int8_inference_io_is_quantized_by_verify(trained_cnn, digits_split, tmp_path):
    result = export.to_tflite(trained_cnn, tmp_path / "io.tflite", quantize="int8",
                              representative_data=digits_split[0][0][:200],
                              inference_io="int8", progress=False)
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=result.path).get_signature_runner()
    assert runner.get_input_details()["image"]["dtype"] == np.int8
    assert runner.get_output_details()["logits"]["dtype"] == np.int8
    parity = export.verify(result.path, trained_cnn, digits_split[1])
    assert parity.agreement >= 0.97


def test_quantize_and_dequantize_follow_the_affine_formula():
    details = {"name": "t", "dtype": np.int8,
               "quantization_parameters": {"scales": np.array([0.5]),
                                           "zero_points": np.array([-3])}}
    x = np.array([-100.0, -1.2, 0.0, 0.26, 1.0, 70.0])
    q = quantize_input(x, details)
    # round(x / 0.5) - 3, clipped to [-128, 127]: by hand
    np.testing.assert_array_equal(q, np.array([-128, -5, -3, -2, -1, 127], np.int8))
    np.testing.assert_allclose(dequantize_output(q, details),
                               (q.astype(np.float32) + 3) * 0.5)


def _three_output_model():
    # Names chosen so alphabetical order (alpha, mid, zeta) differs from the
    # Keras order; two outputs share a shape so only names can tell them apart.
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = [layers.Dense(10, name="zeta")(x), layers.Dense(10, name="alpha")(x),
               layers.Dense(3, name="mid")(x)]
    return keras.Model(inputs, outputs, name="three_heads")


def test_multi_output_outputs_are_matched_by_name(digits_split, tmp_path):
    model = _three_output_model()
    result = export.to_tflite(model, tmp_path / "m.tflite", progress=False)
    assert result.output_names == ("zeta", "alpha", "mid")
    x, y = digits_split[1]
    parity = export.verify(result.path, model, (x, [y, y, y % 3]))
    assert [o.name for o in parity.outputs] == ["zeta", "alpha", "mid"]
    keras_out = model.predict(x, verbose=0)
    for i, out in enumerate(parity.outputs):
        assert out.agreement == 1.0 and out.max_abs_diff < 1e-4
        labels = [y, y, y % 3][i]
        assert out.accuracy_keras == pytest.approx(
            np.mean(keras_out[i].argmax(-1) == labels))
    assert parity["mid"] is parity.outputs[2]
    # One label array shared by same-width outputs is applied to each.
    shared = export.verify(result.path, model, (x, {"zeta": y, "alpha": y}))
    assert shared["mid"].accuracy_keras is None
    assert shared["zeta"].accuracy_keras == pytest.approx(parity["zeta"].accuracy_keras)


@pytest.mark.slow
@pytest.mark.parametrize("naming", ["list", "custom"])
def test_multi_output_files_from_other_converters(digits_split, tmp_path, naming):
    model = _three_output_model()
    spec = tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image")
    if naming == "list":  # signature outputs output_0.. in Keras order
        fn = tf.function(lambda x: model(x, training=False))
    else:  # arbitrary names: matched by shape and values
        fn = tf.function(lambda x: dict(zip(["c", "b", "a"], model(x, training=False))))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [fn.get_concrete_function(spec)], model)
    path = tmp_path / "other.tflite"
    path.write_bytes(converter.convert())
    parity = export.verify(path, model, digits_split[1][0][:100])
    for out in parity.outputs:
        assert out.agreement == 1.0 and out.max_abs_diff < 1e-4


def test_two_input_model_round_trip(digits_split, tmp_path):
    image = keras.Input((8, 8, 1), name="image")
    extra = keras.Input((4,), name="extra")
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, activation="relu")(image))
    x = layers.Concatenate()([x, layers.Dense(8, activation="relu")(extra)])
    model = keras.Model([image, extra], layers.Dense(10, name="logits")(x))
    (x_img, y), _ = digits_split
    x_img, y = x_img[:200], y[:200]
    x_extra = np.random.default_rng(0).uniform(size=(200, 4)).astype("float32")
    float_file = export.to_tflite(model, tmp_path / "f.tflite", progress=False)
    assert float_file.input_names == ("image", "extra")
    parity = export.verify(float_file.path, model, ([x_img, x_extra], y))
    assert parity.agreement == 1.0 and parity.max_abs_diff < 1e-4
    keras_top1 = model.predict([x_img, x_extra], verbose=0).argmax(-1)
    assert parity.accuracy_keras == pytest.approx(np.mean(keras_top1 == y))
    int8_file = export.to_tflite(model, tmp_path / "q.tflite", quantize="int8",
                                 representative_data=[x_img, x_extra], progress=False)
    parity = export.verify(int8_file.path, model, [x_img, x_extra])
    assert parity.agreement >= 0.9  # untrained: near-tied logits may flip


def test_lazy_reexports_resolve_or_raise():
    assert {"to_tflite_staged", "StagedRunner", "size_report"} <= set(dir(export))
    with pytest.raises(AttributeError, match="no_such_name"):
        export.no_such_name


@pytest.mark.slow
def test_agreement_against_another_model_matches_numpy(trained_cnn, digits_split, tmp_path):
    other = _fit(small_cnn(name="other"), (digits_split[0][0][:300], digits_split[0][1][:300]), 1)
    path = export.to_tflite(trained_cnn, tmp_path / "a.tflite", progress=False).path
    x = digits_split[1][0]
    data = tf.data.Dataset.from_tensor_slices(x).batch(64)  # x only: no labels
    parity = export.verify(path, other, data)
    expected = np.mean(trained_cnn.predict(x, verbose=0).argmax(-1)
                       == other.predict(x, verbose=0).argmax(-1))
    assert parity.agreement == pytest.approx(expected)
    assert parity.accuracy_tflite is None and parity.accuracy_keras is None


@pytest.mark.slow
def test_qat_model_exports_int8_without_representative_data(digits_split, tmp_path):
    import tensorflow_model_optimization as tfmot
    float_model = small_cnn(name="qat_base", se=False)  # tfmot has no Multiply config
    _fit(float_model, digits_split[0], epochs=5)
    qat = tfmot.quantization.keras.quantize_model(float_model)
    # One short epoch fine-tunes and sets the activation ranges export uses.
    _fit(qat, (digits_split[0][0][:700], digits_split[0][1][:700]), epochs=1)
    assert export.is_qat_model(qat) and not export.is_qat_model(float_model)
    result = export.to_tflite(qat, tmp_path / "qat.tflite", quantize="int8",
                              progress=False)
    assert result.qat
    _, tensors = _ops_and_tensors(result.path)
    assert sum(t["dtype"] == np.int8 for t in tensors) >= 5
    parity = export.verify(result.path, qat, digits_split[1])
    assert parity.agreement >= 0.99
    with pytest.raises(ValueError, match="quantize='int8'"):
        export.to_tflite(qat, tmp_path / "d.tflite", quantize="dynamic")


def test_bad_quantize_lists_valid_modes(trained_cnn, tmp_path):
    with pytest.raises(ValueError, match="'none', 'dynamic', 'int8'"):
        export.to_tflite(trained_cnn, tmp_path / "x.tflite", quantize="int4")


def test_int8_without_representative_data_says_what_to_pass(trained_cnn, tmp_path):
    with pytest.raises(ValueError, match="representative_data="):
        export.to_tflite(trained_cnn, tmp_path / "x.tflite", quantize="int8")
    assert not (tmp_path / "x.tflite").exists()


def test_unwritable_path_is_named(trained_cnn, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    bad = blocker / "model.tflite"  # parent is a regular file
    with pytest.raises(OSError, match=str(bad)):
        export.to_tflite(trained_cnn, bad, progress=False)
    with pytest.raises(OSError, match="is a directory"):
        export.to_tflite(trained_cnn, tmp_path, progress=False)


def test_unconvertible_op_names_the_layer(tmp_path):
    inputs = keras.Input((4, 4), name="matrix")
    x = layers.Lambda(lambda t: tf.linalg.det(t)[:, None], name="determinant")(inputs)
    model = keras.Model(inputs, layers.Dense(2)(x))
    with pytest.raises(export.ExportError, match="MatrixDeterminant.*'determinant'"):
        export.to_tflite(model, tmp_path / "det.tflite", progress=False)
    assert not (tmp_path / "det.tflite").exists()


def test_int8_refuses_ops_left_in_float_unless_allowed(tmp_path):
    inputs = keras.Input((8,), name="vector")
    x = layers.Lambda(tf.sin, name="sine")(layers.Dense(8)(inputs))
    model = keras.Model(inputs, layers.Dense(2)(x))
    rep = np.random.default_rng(0).uniform(size=(20, 8)).astype("float32")
    with pytest.raises(export.ExportError, match="SIN in layer 'sine'.*allow_float_ops"):
        export.to_tflite(model, tmp_path / "s.tflite", quantize="int8",
                         representative_data=rep, progress=False)
    result = export.to_tflite(model, tmp_path / "s.tflite", quantize="int8",
                              representative_data=rep, allow_float_ops=True,
                              progress=False)
    assert result.float_ops == ("SIN@sine",)
    parity = export.verify(result.path, model, rep)
    assert parity.max_abs_diff < 0.1


def test_verify_missing_file_is_named(trained_cnn, tmp_path):
    missing = tmp_path / "nowhere.tflite"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        export.verify(missing, trained_cnn, np.zeros((1, 8, 8, 1), np.float32))


def test_keras3_and_non_model_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="mntk.compat"):
        export.to_tflite(object(), tmp_path / "x.tflite")
    with pytest.raises(TypeError, match="keras.Model"):
        export.to_tflite(layers.Dense(2), tmp_path / "x.tflite")


def _transition_model():
    """DenseNet's transition block: BN -> ReLU -> 1x1 conv -> AveragePooling2D."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Activation("relu", name="relu")(x)
    x = layers.Conv2D(8, 1, use_bias=False, name="transition")(x)
    x = layers.AveragePooling2D(2, strides=2, name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="transition")


def test_average_pool_same_scale_violation_names_the_cause_and_the_fix(
        digits_split, tmp_path, monkeypatch):
    from mntk import quantization
    x, y = digits_split[0][0][:128], digits_split[0][1][:128]
    qat = quantization.quantize(_transition_model(), scheme="int8")
    qat(x, training=True)  # activation ranges

    class ConverterError(Exception):  # the converter's error, by its class name
        pass

    message = ("<unknown>:0: error: loc(fused[\"AvgPool:\", \"transition/quant_pool/AvgPool"
               "@__inference_serve_42\"]): 'tfl.average_pool_2d' op quantization "
               "parameters violate the same scale constraint: !quant.uniform<i8:f32, "
               "0.0108> vs. !quant.uniform<i8:f32, 0.0039:-128>")

    def refuse():
        raise ConverterError(message)

    real = tf.lite.TFLiteConverter.from_saved_model

    def refusing_converter(*args, **kwargs):
        converter = real(*args, **kwargs)
        converter.convert = refuse
        return converter

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model",
                        staticmethod(refusing_converter))
    with pytest.raises(export.ExportError) as err:
        export.to_tflite(qat, tmp_path / "q.tflite", quantize="int8", progress=False)
    text = str(err.value)
    assert "op AVERAGE_POOL_2D in layer 'pool'" in text and "same-scale" in text
    assert "skip=['pool']" in text and "dynamic" not in text and "\n" not in text
    monkeypatch.undo()
    # The fix the message gives: the pool left unquantized takes its input's
    # scale; the file converts and agrees with the QAT model.
    fixed = quantization.quantize(_transition_model(), scheme="int8", skip=["pool"])
    fixed(x, training=True)
    result = export.to_tflite(fixed, tmp_path / "fixed.tflite", quantize="int8",
                              progress=False)
    ops, _ = _ops_and_tensors(result.path)
    assert "AVERAGE_POOL_2D" in ops
    parity = export.verify(result, fixed, (x, y))
    assert parity.agreement >= 0.99 and parity.max_abs_diff < 0.05, (
        parity.agreement, parity.max_abs_diff)
