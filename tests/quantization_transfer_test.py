"""mntk.quantization.transfer: a learned-precision model started from an
8-bit QAT model's ranges computes, at 8 bits, what the QAT model computes."""
import numpy as np
import pytest

from _models import small_cnn
from mntk import quantization as q
from mntk.compat import keras
from mntk.quantization.transfer import (_activation_entries, load_quantizer_ranges,
                                        quantizer_ranges)
from mntk.train.stages.qat8 import copy_qat_weights


def _int8_trained():
    keras.utils.set_random_seed(0)
    float_model = small_cnn(se=False)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    int8 = q.quantize(float_model, "int8")
    # a training step's forward: tfmot sets the kernels' last-value ranges
    int8(x, training=True)
    for v in int8.trainable_weights:   # then the step's update moves the kernels
        if v.name.endswith("kernel:0"):
            v.assign(v * 1.01)
    # tfmot's moving averages barely leave their [-6, 6] start in a few steps:
    # give every activation its own range, as a long QAT run would
    for i, (_, _, variables) in enumerate(_activation_entries(int8)):
        variables["min_var"].assign(-0.1 * i - 0.05)
        variables["max_var"].assign(1.0 + 0.7 * i)
    copy_qat_weights(float_model, int8)   # the qat8 stage hands these weights on
    return float_model, int8, x


def _outputs(model, x):
    """Every layer's output at inference (the QuantizeLayer's on)."""
    probe = keras.Model(model.inputs, [l.output for l in model.layers[1:]])
    return [t.numpy() for t in probe(x, training=False)]


def test_learned_model_from_qat8_ranges_equals_the_qat8_model():
    float_model, int8, x = _int8_trained()
    ranges = quantizer_ranges(int8)
    lo, hi = ranges["quant_wide_pw/post_activation"]
    step = (hi - lo) / 255.0    # one step of the last conv's 8-bit output grid
    want = _outputs(int8, x)
    learned = q.quantize(float_model, q.LearnedPrecisionScheme(init_bits=8), skip=set())
    # from its own initialization the learned model is steps away
    fresh = _outputs(learned, x)
    assert max(np.max(np.abs(a - b)) for a, b in zip(fresh, want)) > 1.0 * step
    # a missing or impossible range is named
    with pytest.raises(ValueError, match="quant_re_lu/output"):
        load_quantizer_ranges(learned, {k: v for k, v in ranges.items()
                                        if k != "quant_re_lu/output"})
    with pytest.raises(ValueError, match="does not hold 0"):
        load_quantizer_ranges(learned, dict(ranges, **{"quant_re_lu/output": (0.5, 2.0)}))
    set_keys = load_quantizer_ranges(learned, ranges)
    assert "quant_wide_pw/post_activation" in set_keys
    assert any("/weight:" in k for k in set_keys) and any(k.startswith("quantize(") for k in set_keys)
    got = _outputs(learned, x)
    for layer, a, b in zip(int8.layers[1:], got, want):
        assert np.max(np.abs(a - b)) < 0.01 * step, layer.name
    # training does not re-calibrate the transferred ranges on its first batch
    learned(x, training=True)
    assert quantizer_ranges(learned)["quant_re_lu/output"] == pytest.approx(
        ranges["quant_re_lu/output"], rel=1e-6)
