"""mntk.cost graph walk: nested models, shapes, exits, tfmot wrappers, bits."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot

from mntk.compat import keras
import mntk

import cost_reference

L = keras.layers
tfq = tfmot.quantization.keras


def small_cnn(input_shape=(6, 6, 2)):
    inputs = keras.Input(input_shape)
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="r1")(x)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, L.Dense(3, name="fc")(x), name="small")


def totals(report):
    return (report.param_bits, report.raw_mults, report.raw_adds, report.ops)


def test_nested_model_counted_layer_by_layer():
    inner = small_cnn()
    inputs = keras.Input((6, 6, 2))
    x = L.Rescaling(0.5, name="pre")(inputs)
    outer = keras.Model(inputs, inner(x))
    flat, nested = mntk.cost.estimate(inner), mntk.cost.estimate(outer)
    [pre] = [r for r in nested.layers if r.layer == "pre"]
    assert nested.param_bits == flat.param_bits + pre.param_bits
    assert nested.ops == flat.ops + pre.ops
    assert [r.name for r in nested.layers][1:] == ["small/" + r.name for r in flat.layers]


def test_model_called_twice_counts_twice():
    inner = small_cnn()
    a, b = keras.Input((6, 6, 2)), keras.Input((6, 6, 2))
    outer = keras.Model([a, b], L.Add(name="sum")([inner(a), inner(b)]))
    once = mntk.cost.estimate(inner)
    twice = mntk.cost.estimate(outer)
    assert twice.raw_mults == 2 * once.raw_mults
    assert twice.raw_adds == 2 * once.raw_adds + 3      # plus the Add of 3 logits


def test_input_shape_sizes_unknown_dims():
    model = small_cnn(input_shape=(None, None, 2))
    with pytest.raises(ValueError, match="input_shape"):
        mntk.cost.estimate(model)
    sized = mntk.cost.estimate(model, input_shape=(6, 6, 2))
    assert totals(sized) == totals(mntk.cost.estimate(small_cnn()))
    bigger = mntk.cost.estimate(model, input_shape=(12, 12, 2))
    # Conv/depthwise/relu costs scale with H*W (x4); GAP adds go 35*4 -> 143*4.
    assert bigger.param_bits == sized.param_bits
    assert bigger.raw_adds > 3.9 * (sized.raw_adds - 60)


def test_sequential_model():
    seq = keras.Sequential([L.Dense(4, activation="relu", name="a"), L.Dense(2, name="b")])
    report = mntk.cost.estimate(seq, input_shape=(5,))
    # a: 20 mults, 16 + 4 adds, 4 relu mults; b: 8 mults, 6 + 2 adds.
    assert (report.raw_mults, report.raw_adds) == (20 + 4 + 8, 20 + 8)


def test_subclassed_model_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="functional"):
        mntk.cost.estimate(Net())


def exit_model():
    inputs = keras.Input((8,))
    h1 = L.Dense(6, activation="relu", name="h1")(inputs)
    exit0 = L.Dense(3, name="exit0")(h1)
    h2 = L.Dense(6, activation="relu", name="h2")(h1)
    exit1 = L.Dense(3, name="exit1")(h2)
    return keras.Model(inputs, [exit0, exit1])


def test_exit_ops_and_expectation():
    model = exit_model()
    report = mntk.cost.estimate(model)
    # Hand count: h1 48 mults + 48 adds + 6 relu; exit0 18 + 18;
    # h2 36 + 36 + 6 relu; exit1 18 + 18.
    e0 = 48 + 48 + 6 + 18 + 18
    e1 = e0 + 36 + 36 + 6 + 18 + 18
    assert report.exit_ops == [e0, e1]
    assert report.ops == e1                          # no rates: every head computed
    rated = mntk.cost.estimate(model, exit_rates=[0.3, 0.7])
    assert rated.ops == pytest.approx(0.3 * e0 + 0.7 * e1)
    assert rated.param_bits == report.param_bits     # params count every head
    assert rated.raw_mults == pytest.approx(0.3 * (48 + 6 + 18) + 0.7 * (48 + 6 + 18 + 36 + 6 + 18))
    by_layer = {r.name: r.exit for r in report.layers}
    assert by_layer == {"h1": 0, "h1/activation": 0, "exit0": 0, "h2": 1,
                        "h2/activation": 1, "exit1": 1}


def test_single_output_exit_ops():
    report = mntk.cost.estimate(small_cnn())
    assert report.exit_ops == [report.ops]


@pytest.mark.parametrize("rates,match", [
    ([1.0], "2 outputs"), ([0.5, 0.6], "sum to"), ([-0.5, 1.5], "non-negative"),
    ([float("nan"), 1.0], "non-negative"),
])
def test_exit_rates_validation(rates, match):
    with pytest.raises(ValueError, match=match):
        mntk.cost.estimate(exit_model(), exit_rates=rates)


@pytest.mark.slow
def test_pruned_model_reads_masked_weights():
    model = small_cnn()
    pruned = tfmot.sparsity.keras.prune_low_magnitude(
        model, pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(0.5, 0, frequency=1))
    pruned.compile("sgd", keras.losses.MeanSquaredError())
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    y = np.zeros((8, 3), "float32")
    pruned.fit(x, y, epochs=1, verbose=0,
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    report = mntk.cost.estimate(pruned)
    wrapper = pruned.get_layer("prune_low_magnitude_c1")
    [(weight, mask, _)] = wrapper.pruning_vars
    effective = weight.numpy() * mask.numpy()
    assert (effective == 0).mean() == pytest.approx(0.5, abs=0.05)
    [row] = [r for r in report.layers if r.layer == "prune_low_magnitude_c1"]
    nnz = (effective.reshape(-1, 4) != 0).sum(axis=0)
    assert row.mults == nnz.sum() * 36
    assert row.adds == (np.maximum(nnz - 1, 0).sum() + 4) * 36   # + folded BN bias
    assert row.param_bits == 32 * nnz.sum() + effective.size + 32 * 4
    assert row.sparsity == pytest.approx((effective == 0).mean())


@pytest.mark.slow
def test_tfmot_default_8bit_model():
    model = small_cnn()
    q = tfq.quantize_model(model)
    q.compile("sgd", keras.losses.MeanSquaredError())
    x = np.random.default_rng(0).normal(size=(8, 6, 6, 2)).astype("float32")
    q.fit(x, np.zeros((8, 3), "float32"), epochs=1, verbose=0)   # sets the ranges
    report = mntk.cost.estimate(q)
    wrapper = q.get_layer("quant_c1")
    [(weight, quantizer, qvars)] = wrapper._weight_vars
    effective = quantizer(weight, False, weights=qvars).numpy().reshape(-1, 4)
    storage_bits, stored = cost_reference.storage(effective, 8.0)
    [row] = [r for r in report.layers if r.layer == "quant_c1"]
    assert row.bits == 8 and row.kind == "conv+bn"
    # Storage: the cheaper of dense/sparse 8-bit values + the folded BN bias
    # at 32 bits + the per-channel min/max of the weight quantizer (2 x 4).
    assert row.param_bits == storage_bits + 32 * 4 + 32 * 8
    # Input comes from the 8-bit QuantizeLayer: the mults count 8/32.
    assert row.mults == stored.sum() * 36
    assert row.ops == pytest.approx(row.mults * 8 / 32 + row.adds)
    # The classifier reads the GAP output, which tfmot quantizes to 8 bits, with
    # 8-bit weights: its mults count 8/32; the GAP multiplies by the 32-bit
    # constant 1/(H*W), so its mults count 32/32.
    [fc] = [r for r in report.layers if r.layer == "quant_fc"]
    [gap] = [r for r in report.layers if r.layer == "quant_gap"]
    assert (fc.mult_bits, gap.mult_bits, fc.add_bits) == (8, 32, 32)
    with pytest.raises(ValueError, match="freebie=True refused.*8 bits"):
        mntk.cost.estimate(q, freebie=True)


@keras.utils.register_keras_serializable(package="mntk_test")
class FakeChannelQuantizer(tfq.quantizers.Quantizer):
    """A test stand-in for mntk's learned-precision quantizer: a per-channel
    bit width variable, symmetric rounding to that grid, the cost protocol."""

    def __init__(self, bits=(2, 4, 8)):
        self.bits = list(bits)

    def build(self, tensor_shape, name, layer):
        bits = layer.add_weight(name + "_bits", shape=(len(self.bits),), trainable=False,
                                initializer=keras.initializers.Constant(self.bits))
        return {"bits": bits}

    def __call__(self, inputs, training, weights, **kwargs):
        levels = 2.0 ** (weights["bits"] - 1) - 1
        scale = tf.reduce_max(tf.abs(inputs), axis=0) / levels
        return tf.round(inputs / scale) * scale

    def cost_bits(self, quantizer_vars):
        return quantizer_vars["bits"].numpy()

    def cost_params(self, quantizer_vars):
        return len(self.bits)      # one scale per channel at inference

    def get_config(self):
        return {"bits": self.bits}


@keras.utils.register_keras_serializable(package="mntk_test")
class KernelOnlyConfig(tfq.QuantizeConfig):
    def get_weights_and_quantizers(self, layer):
        return [(layer.kernel, FakeChannelQuantizer())]

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel = quantize_weights[0]

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def test_quantizer_protocol_per_channel_bits():
    inputs = keras.Input((5,))
    dense = tfq.quantize_annotate_layer(L.Dense(3, use_bias=False, name="fc"),
                                        KernelOnlyConfig())
    annotated = keras.Model(inputs, dense(inputs))
    with tfq.quantize_scope({"KernelOnlyConfig": KernelOnlyConfig,
                             "FakeChannelQuantizer": FakeChannelQuantizer}):
        q = tfq.quantize_apply(annotated)
    report = mntk.cost.estimate(q)
    [quantize_input] = [r for r in report.layers if r.kind == "quantize"]
    assert quantize_input.bits == 8 and quantize_input.param_bits == 32 * 2  # min, max
    wrapper = q.layers[-1]
    [row] = [r for r in report.layers if r.layer == wrapper.name]
    [(weight, quantizer, qvars)] = wrapper._weight_vars
    effective = quantizer(weight, False, weights=qvars).numpy()
    bits = np.array([2.0, 4.0, 8.0])
    # Per-channel storage (cheaper of dense/sparse, bits summed per channel)
    # + one 32-bit scale per channel (cost_params = 3).
    storage_bits, nnz = cost_reference.storage(effective, bits)
    assert row.param_bits == storage_bits + 32 * 3
    assert row.bits == pytest.approx(bits.mean())
    # Inputs are 8-bit (QuantizeLayer): a mult counts max(w bits, 8) / 32.
    assert row.mults == nnz.sum()
    assert row.ops == pytest.approx((nnz * np.maximum(bits, 8)).sum() / 32 + row.adds)
    with pytest.raises(ValueError, match="freebie=True refused"):
        mntk.cost.estimate(q, freebie=True)


def test_quantizer_without_bits_is_an_error():
    from mntk.cost.wrappers import quantizer_bits
    with pytest.raises(TypeError, match="object.*'fc'.*cost_bits.*num_bits"):
        quantizer_bits(object(), {}, "weight 'kernel' of layer 'fc'")


def test_layer_rows_recount_a_kernel_at_its_channel_bits():
    """layer_rows' documented fields give back each kernel row's mults and ops."""
    inputs = keras.Input((5,))
    dense = tfq.quantize_annotate_layer(L.Dense(3, use_bias=False, name="fc"),
                                        KernelOnlyConfig())
    annotated = keras.Model(inputs, dense(inputs))
    with tfq.quantize_scope({"KernelOnlyConfig": KernelOnlyConfig,
                             "FakeChannelQuantizer": FakeChannelQuantizer}):
        q = tfq.quantize_apply(annotated)
    rows = mntk.cost.layer_rows(q)
    [row] = [r for r in rows if r.channels]
    np.testing.assert_array_equal(row.channel_bits, [2.0, 4.0, 8.0])
    assert (row.spatial, row.input_bits, row.channels) == (1, 8.0, 3)
    per_channel = row.channel_values * row.spatial
    assert row.mults == per_channel.sum()
    mult_ops = (per_channel * np.maximum(row.channel_bits, row.input_bits)).sum() / 32
    assert row.mult_ops == pytest.approx(mult_ops)
