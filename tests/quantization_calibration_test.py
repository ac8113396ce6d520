"""mntk.quantization.calibrate_ranges / quantize(calibration_data=...): each
activation quantizer starts at its tensor's range in the float model."""
import numpy as np
import pytest

from _marks import fast_first
from _quantization_helpers import tiny_model
from mntk import quantization as q
from mntk.compat import keras


def _model_and_data():
    keras.utils.set_random_seed(0)
    model = tiny_model()
    # inference-mode BatchNormalization differs from training mode (batch
    # statistics), so a range taken in the wrong mode would show
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.02, "float32"))
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 0.3, "float32"))
    rng = np.random.default_rng(0)
    # small activations (|x| ~ 0.05): tfmot's [-6, 6] start holds few grid steps
    x = (0.05 * rng.normal(size=(48, 8, 8, 1))).astype("float32")
    return model, x


def _float_ranges(model, x):
    """Independent reference: each layer's inference output range in the float
    model, with 0 included (TFLite's zero point lies on the grid)."""
    probe = keras.Model(model.inputs, [l.output for l in model.layers[1:]])
    out = {"input": (float(x.min()), float(x.max()))}
    for layer, value in zip(model.layers[1:], probe(x, training=False)):
        value = np.asarray(value)
        out[layer.name] = (float(value.min()), float(value.max()))
    return {k: (min(lo, 0.0), max(hi, 0.0)) for k, (lo, hi) in out.items()}


def _layer_of(key):
    name = key.split("/")[0]
    if name.startswith("quantize("):
        return "input"
    assert name.startswith("quant_"), key
    return name[len("quant_"):]


@pytest.mark.parametrize("scheme", fast_first(["int8", "learned"]))
def test_ranges_are_the_float_models_tensor_ranges(scheme):
    model, x = _model_and_data()
    want = _float_ranges(model, x)
    s = "int8" if scheme == "int8" else q.LearnedPrecisionScheme(init_bits=8)
    qat = q.quantize(model, s, skip=set(), calibration_data=x)
    got = {k: v for k, v in q.quantizer_ranges(qat).items() if "/weight:" not in k}
    assert len(got) >= 5, got  # input, stem, dw, pw, fc, logits
    for key, (lo, hi) in got.items():
        np.testing.assert_allclose((lo, hi), want[_layer_of(key)], rtol=1e-5, atol=1e-7,
                                   err_msg=key)
    # the caller's float model is untouched; a calibrated model's inference is the
    # float model's to within a few 8-bit steps of the logits' range
    lo, hi = want["logits"]
    diff = np.max(np.abs(qat.predict(x, verbose=0) - model.predict(x, verbose=0)))
    assert diff < 6 * (hi - lo) / 255, (diff, (hi - lo) / 255)


@pytest.mark.slow
def test_calibrated_model_agrees_with_its_int8_tflite_file(tmp_path):
    from mntk import export
    model, x = _model_and_data()
    qat = q.quantize(model, "int8", calibration_data=x[:32])
    qat.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, np.arange(len(x)) % 10, batch_size=16, epochs=1, verbose=0)
    result = export.to_tflite(qat, str(tmp_path / "q.tflite"), quantize="int8",
                              progress=False)
    check = export.verify(result, qat, x[32:])
    lo, hi = q.quantizer_ranges(qat)["quant_logits/post_activation"]
    step = (hi - lo) / 255
    # the logits span many steps of their grid (uncalibrated, these logits of
    # about 1e-3 round to 0 on [-6, 6]: constant, so parity would say nothing) ...
    assert np.std(qat.predict(x[32:], verbose=0)) > 20 * step
    # ... and the int8 file computes them to within a few steps
    assert check.max_abs_diff <= 8 * step, (check.max_abs_diff, step)


def test_uncalibrated_start_is_tfmots_and_errors_are_named():
    model, x = _model_and_data()
    qat = q.quantize(model, "int8")
    ranges = {k: v for k, v in q.quantizer_ranges(qat).items() if "/weight:" not in k}
    # what calibration replaces: tfmot's start (0-wide where mntk's config starts one)
    assert (-6.0, 6.0) in set(ranges.values()) <= {(-6.0, 6.0), (0.0, 0.0)}
    with pytest.raises(ValueError, match="no activation quantizer"):
        q.calibrate_ranges(model, x)
