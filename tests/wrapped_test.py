"""mntk.wrapped: reading tfmot pruning / QAT wrappers, checked against numpy."""
import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from mntk import quantization, wrapped
from mntk.compat import keras


def _model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(3, name="dense")(x)
    return keras.Model(inputs, outputs)


def _pruned():
    schedule = tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1)
    return tfmot.sparsity.keras.prune_low_magnitude(_model(), pruning_schedule=schedule)


def _numpy_fake_quant(x, lo, hi, bits=8, narrow=True):
    """tf.quantization.fake_quant_with_min_max_vars, written from its formula:
    nudge the zero point onto the integer grid, clamp, round to the step."""
    qmin, qmax = (1 if narrow else 0), 2 ** bits - 1
    scale = (hi - lo) / (qmax - qmin)
    zero = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    nlo, nhi = (qmin - zero) * scale, (qmax - zero) * scale
    clamped = np.clip(x, nlo, nhi)
    return np.floor((clamped - nlo) / scale + 0.5) * scale + nlo


def test_plain_model_is_neither_pruned_nor_quantized():
    model = _model()
    assert not wrapped.is_pruned(model)
    assert not wrapped.is_quantized(model)
    conv = model.get_layer("conv")
    assert wrapped.unwrap(conv) is conv
    np.testing.assert_array_equal(wrapped.effective_kernel(conv), conv.kernel.numpy())
    assert wrapped.effective_kernel(model.get_layer("flat")) is None


def test_pruned_effective_kernel_is_kernel_times_mask():
    model = _pruned()
    assert wrapped.is_pruned(model) and not wrapped.is_quantized(model)
    layer = model.get_layer("prune_low_magnitude_dense")
    assert isinstance(wrapped.unwrap(layer), keras.layers.Dense)
    rng = np.random.default_rng(0)
    (weight, mask, _), = layer.pruning_vars
    mask_value = (rng.random(mask.shape) < 0.5).astype(np.float32)
    mask.assign(mask_value)
    np.testing.assert_array_equal(wrapped.effective_kernel(layer), weight.numpy() * mask_value)
    np.testing.assert_array_equal(wrapped.masks(layer)["kernel"], mask_value)
    # biases are never masked, and the mask itself is not a weight of the layer
    np.testing.assert_array_equal(wrapped.effective_weights(layer)["bias"],
                                  layer.layer.bias.numpy())
    names = [wrapped.short_name(v) for v in wrapped.latent_variables(layer)]
    assert sorted(names) == ["bias", "kernel"]


def test_int8_qat_effective_kernel_matches_numpy_fake_quant():
    model = _model()
    q = quantization.quantize(model, scheme="int8")
    assert wrapped.is_quantized(q) and not wrapped.is_pruned(q)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 2)).astype(np.float32)
    q(x, training=True)  # tfmot's last-value quantizer takes the kernel's range here
    conv = q.get_layer("quant_conv")
    assert wrapped.unwrap(conv).name == "conv"
    (wq,) = wrapped.weight_quantizers(conv)
    assert wq.name == "kernel"
    latent = wrapped.latent_weights(conv)["kernel"].numpy()
    np.testing.assert_array_equal(latent, model.get_layer("conv").kernel.numpy())
    # int8 conv weights: symmetric per output channel, narrow range [-127, 127]
    hi = np.abs(latent).reshape(-1, latent.shape[-1]).max(0)
    expected = np.stack([_numpy_fake_quant(latent[..., c], -hi[c], hi[c])
                         for c in range(latent.shape[-1])], -1)
    np.testing.assert_allclose(wrapped.effective_kernel(conv), expected, atol=1e-6)
    assert wrapped.quantizer_bits(wq.quantizer, wq.variables) == 8.0
    # relu output is quantized after the activation; the input by a QuantizeLayer
    kinds = [a.kind for a in wrapped.activation_quantizers(conv)]
    assert kinds == ["post_activation"]
    (quantize_layer,) = [l for l in q.layers if wrapped.is_quantize_layer(l)]
    assert wrapped.quantizer_bits(wrapped.input_quantizer(quantize_layer).quantizer,
                                  None) == 8.0
    assert len(wrapped.quantize_wrappers(q)) == 3  # conv, flatten, dense


def test_ternary_qat_effective_kernel_follows_ttq_rule():
    q = quantization.quantize(_model(), scheme=quantization.TernaryScheme(), skip=[])
    dense = q.get_layer("quant_dense")
    (wq,) = wrapped.weight_quantizers(dense)
    w = wq.weight.numpy()
    wp, wn = abs(float(wq.variables["wp"])), abs(float(wq.variables["wn"]))
    step = max(wp, wn) / 127.0
    wp, wn = np.round(wp / step) * step, np.round(wn / step) * step
    delta = 0.05 * np.abs(w).max()
    expected = np.where(w > delta, wp, np.where(w < -delta, -wn, 0.0))
    np.testing.assert_allclose(wrapped.effective_kernel(dense), expected, rtol=1e-6)
    assert wrapped.quantizer_bits(wq.quantizer, wq.variables) == 1.0


def test_learned_precision_bits_are_per_channel():
    q = quantization.quantize(_model(), scheme=quantization.LearnedPrecisionScheme())
    conv = q.get_layer("quant_conv")
    (wq,) = wrapped.weight_quantizers(conv)
    wq.variables["gamma"].assign([0.3, 0.5, 0.75, 1.0])
    bits = wrapped.quantizer_bits(wq.quantizer, wq.variables)
    np.testing.assert_array_equal(bits, [2.0, 4.0, 6.0, 8.0])  # clip(round(8 gamma), 2, 8)
    assert [type(x).__name__ for x in wrapped.all_quantizers(conv)].count(
        "LearnedPrecisionWeightQuantizer") == 1


def test_nested_models_are_searched():
    inner = _pruned()
    outer = keras.Sequential([inner])
    assert wrapped.is_pruned(outer)
    # tfmot wraps every layer it supports, weightless Flatten included
    assert [wrapped.unwrap(l).name for l in wrapped.prune_wrappers(outer)] == [
        "conv", "flat", "dense"]


def test_tfmot_classes_are_the_ones_detected():
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_wrapper
    assert wrapped.PruneLowMagnitude is pruning_wrapper.PruneLowMagnitude
    assert wrapped.QuantizeWrapperV2 is tfmot.quantization.keras.QuantizeWrapperV2
    assert issubclass(wrapped.QuantizeWrapperV2, wrapped.QuantizeWrapper)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        wrapped.Nope


def test_errors_name_the_layer():
    dense = _model().get_layer("dense")
    with pytest.raises(TypeError, match="'dense'.*not a tfmot QuantizeWrapper"):
        wrapped.weight_quantizers(dense)
    with pytest.raises(TypeError, match="'dense'.*PruneLowMagnitude"):
        wrapped.masks(dense)
    with pytest.raises(TypeError, match="object.*layer 'x'.*cost_bits"):
        wrapped.quantizer_bits(object(), None, "layer 'x'")
