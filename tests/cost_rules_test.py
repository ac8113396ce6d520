"""Exactness of every MicroNet counting rule, against hand or numpy counts."""
import numpy as np
import pytest

from mntk.compat import keras
import mntk

import cost_reference

L = keras.layers


def rows_of(report, layer_name):
    return [r for r in report.layers if r.layer == layer_name]


def numpy_kernel_count(kernel, channels, spatial, bias, bits=32.0):
    """Independent count: the cheaper of dense and sparse storage, the stored
    values' mults/adds, a dense bias (tests/cost_reference.py)."""
    return cost_reference.kernel_count(kernel, channels, spatial, bias, bits)


def single_layer(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("kernel,strides,padding,use_bias,groups,expect_hw", [
    (3, 1, "same", True, 1, 8),    # ceil(8 / 1)
    (3, 2, "same", False, 1, 4),   # ceil(8 / 2)
    (3, 1, "valid", True, 1, 6),   # 8 - 3 + 1
    (5, 2, "valid", True, 1, 2),   # ceil((8 - 5 + 1) / 2)
    (1, 1, "same", True, 2, 8),    # grouped 1x1
    (3, 1, "same", False, 4, 8),   # grouped 3x3
])
def test_conv2d(kernel, strides, padding, use_bias, groups, expect_hw):
    layer = L.Conv2D(8, kernel, strides=strides, padding=padding, use_bias=use_bias,
                     groups=groups, name="c")
    model = single_layer(layer, (8, 8, 4))
    [row] = rows_of(mntk.cost.estimate(model), "c")
    assert row.shape == (expect_hw, expect_hw, 8)
    n = expect_hw * expect_hw * 8
    vec = kernel * kernel * 4 // groups
    # Hand count: mults vec*N, adds (vec - 1)*N (+N bias).
    assert row.mults == vec * n
    assert row.adds == (vec - 1) * n + (n if use_bias else 0)
    assert row.param_bits == 32 * (vec * 8 + (8 if use_bias else 0))
    assert row.ops == row.mults + row.adds


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise(multiplier):
    model = single_layer(L.DepthwiseConv2D(3, depth_multiplier=multiplier, padding="same",
                                           name="d"), (6, 6, 4))
    [row] = rows_of(mntk.cost.estimate(model), "d")
    channels = 4 * multiplier
    n = 36 * channels
    assert row.kind == "depthwise"
    assert (row.mults, row.adds) == (9 * n, 8 * n + n)       # vector length k*k
    assert row.param_bits == 32 * (9 * channels + channels)


def test_separable_is_depthwise_then_pointwise():
    model = single_layer(L.SeparableConv2D(6, 3, padding="same", name="s"), (5, 5, 4))
    dw, pw = rows_of(mntk.cost.estimate(model), "s")
    assert (dw.name, pw.name) == ("s/depthwise", "s/pointwise")
    assert dw.shape == (5, 5, 4) and pw.shape == (5, 5, 6)
    assert (dw.mults, dw.adds) == (9 * 100, 8 * 100)
    assert (pw.mults, pw.adds) == (4 * 150, 3 * 150 + 150)
    assert dw.param_bits + pw.param_bits == 32 * (36 + 24 + 6)


@pytest.mark.parametrize("input_shape,spatial", [((7,), 1), ((3, 7), 3)])
def test_dense(input_shape, spatial):
    model = single_layer(L.Dense(5, name="fc"), input_shape)
    [row] = rows_of(mntk.cost.estimate(model), "fc")
    assert (row.mults, row.adds) == (7 * 5 * spatial, 6 * 5 * spatial + 5 * spatial)
    assert row.param_bits == 32 * (35 + 5)


@pytest.mark.parametrize("layer_kind", ["conv", "depthwise", "dense"])
def test_sparsity_mask_and_per_channel_counts(layer_kind):
    layer, shape = {
        "conv": (L.Conv2D(6, 3, padding="same", name="k"), (5, 5, 3)),
        "depthwise": (L.DepthwiseConv2D(3, padding="same", name="k"), (5, 5, 6)),
        "dense": (L.Dense(6, name="k"), (9,)),
    }[layer_kind]
    model = single_layer(layer, shape)
    name = "depthwise_kernel" if layer_kind == "depthwise" else "kernel"
    kernel = getattr(layer, name)
    values = kernel.numpy()
    rng = np.random.default_rng(0)
    values[rng.random(values.shape) < 0.5] = 0.0
    values[..., 0] = 0.0                       # one output channel fully pruned
    kernel.assign(values)
    [row] = rows_of(mntk.cost.estimate(model), "k")
    spatial = 25 if layer_kind != "dense" else 1
    mults, adds, param_bits = numpy_kernel_count(values, 6, spatial, bias=True)
    assert (row.mults, row.adds, row.param_bits) == (mults, adds, param_bits)
    assert row.sparsity == pytest.approx((values == 0).mean())


def test_few_zeros_stay_dense():
    """A random init's exact zeros must not trigger the mask (or skip mults):
    sparse storage only wins when zeros * 32 > size (3.1% zeros at 32 bits)."""
    layer = L.Dense(8, name="fc")
    model = single_layer(layer, (16,))
    values = layer.kernel.numpy()
    values.reshape(-1)[:4] = 0.0                         # 4 of 128 zeros: dense
    layer.kernel.assign(values)
    [row] = rows_of(mntk.cost.estimate(model), "fc")
    assert row.encoding == "dense" and row.param_bits == 32 * (128 + 8)
    assert row.mults == 128
    values.reshape(-1)[:5] = 0.0                         # 5 * 32 > 128: sparse
    layer.kernel.assign(values)
    [row] = rows_of(mntk.cost.estimate(model), "fc")
    assert row.encoding == "sparse" and row.param_bits == 32 * (123 + 8) + 128
    assert row.mults == 123


def test_low_bit_channels_choose_the_cheaper_encoding():
    """Per-channel bits are summed per channel: with 2-bit channels the mask
    (1 bit a value) costs more than the zeros save, so stay dense."""
    from mntk.cost.storage import tensor_storage
    rng = np.random.default_rng(4)
    cols = rng.normal(size=(10, 4))
    cols[rng.random(cols.shape) < 0.4] = 0.0
    for bits in ([2, 2, 2, 2], [8, 8, 2, 2], [32, 32, 32, 32]):
        got = tensor_storage(cols, np.array(bits, float))
        want_bits, want_stored = cost_reference.storage(cols, np.array(bits, float))
        assert got.param_bits == want_bits
        np.testing.assert_array_equal(got.stored, want_stored)
    assert tensor_storage(cols, np.full(4, 2.0)).encoding == "dense"
    assert tensor_storage(cols, np.full(4, 32.0)).encoding == "sparse"


def test_block_sparsity_one_mask_bit_per_block():
    import tensorflow_model_optimization as tfmot
    sparsity = tfmot.sparsity.keras
    inputs = keras.Input((8,))
    pruned = sparsity.prune_low_magnitude(
        L.Dense(6, name="fc"), block_size=(2, 3),
        pruning_schedule=sparsity.ConstantSparsity(0.5, 0))
    model = keras.Model(inputs, pruned(inputs))
    wrapper = model.layers[-1]
    [(weight, mask, _)] = wrapper.pruning_vars
    block_mask = np.zeros((4, 2))
    block_mask[[0, 1, 3], [0, 1, 0]] = 1                 # 3 of 8 blocks kept
    mask.assign(np.kron(block_mask, np.ones((2, 3))).astype("float32"))
    [row] = rows_of(mntk.cost.estimate(model), wrapper.name)
    kept = np.kron(block_mask, np.ones((2, 3)))
    stored = kept.sum(axis=0)                            # values per column
    # 18 kept values at 32 bits + one bit per block (8) + 6 biases.
    assert row.encoding == "block"
    assert row.param_bits == 32 * 18 + 8 + 32 * 6
    assert row.mults == stored.sum()
    assert row.adds == np.maximum(stored - 1, 0).sum() + 6


def test_json_rows_show_encoding_and_bit_groups():
    layer = L.Dense(4, name="fc")
    model = single_layer(layer, (40,))
    values = layer.kernel.numpy()
    values[:30] = 0.0
    layer.kernel.assign(values)
    [row] = [r for r in mntk.cost.estimate(model).to_json()["layers"] if r["layer"] == "fc"]
    assert row["encoding"] == "sparse" and row["channels"] == 4
    assert row["bit_groups"] == [{"bits": 32.0, "channels": 4}]


def test_dense_tensor_has_no_mask():
    model = single_layer(L.Dense(4, name="fc", kernel_initializer="ones"), (3,))
    [row] = rows_of(mntk.cost.estimate(model), "fc")
    assert row.param_bits == 32 * (12 + 4) and row.sparsity == 0


def conv_bn_model(conv_bias=False, conv_activation=None, second_consumer=False):
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 3, padding="same", use_bias=conv_bias, activation=conv_activation,
                 name="c")(inputs)
    y = L.BatchNormalization(name="bn")(x)
    outputs = [y, L.ReLU(name="r")(x)] if second_consumer else y
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("conv_bias", [False, True])
def test_batchnorm_folds_into_preceding_conv(conv_bias):
    report = mntk.cost.estimate(conv_bn_model(conv_bias))
    assert rows_of(report, "bn") == []
    [row] = rows_of(report, "c")
    n = 4 * 4 * 3
    # Folded BN = one bias per channel + one add per output; nothing more if
    # the conv already has a bias.
    assert row.kind == "conv+bn"
    assert row.param_bits == 32 * (18 * 3 + 3)
    assert (row.mults, row.adds) == (18 * n, 17 * n + n)


@pytest.mark.parametrize("why", ["activation", "second_consumer"])
def test_batchnorm_not_folded(why):
    model = conv_bn_model(conv_activation="relu" if why == "activation" else None,
                          second_consumer=why == "second_consumer")
    report = mntk.cost.estimate(model)
    [bn] = rows_of(report, "bn")
    n = 4 * 4 * 3
    assert (bn.kind, bn.mults, bn.adds, bn.param_bits) == ("bn", n, n, 32 * 2 * 3)
    assert rows_of(report, "c")[0].kind == "conv"


ACTIVATIONS = {  # name: (mults, adds) per element, from the MicroNet rules
    "relu": (1, 0), "sigmoid": (2, 1), "swish": (3, 1), "tanh": (2, 1),
    "hard_sigmoid": (3, 1), "linear": (0, 0), "relu6": (2, 0),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("fused", [True, False])
def test_activations(name, fused):
    inputs = keras.Input((6,))
    fn = getattr(keras.activations, name, None) or name
    if fused:
        x = L.Dense(4, activation=fn, name="fc")(inputs)
    else:
        x = L.Dense(4, name="fc")(inputs)
        x = L.Activation(fn, name="act")(x) if name != "relu6" else L.ReLU(6.0, name="act")(x)
    x = L.Dense(2, name="out")(x)
    report = mntk.cost.estimate(keras.Model(inputs, x))
    act_rows = [r for r in report.layers if r.kind.startswith("act:")]
    mults, adds = ACTIVATIONS[name]
    assert sum(r.mults for r in act_rows) == 4 * mults
    assert sum(r.adds for r in act_rows) == 4 * adds


@pytest.mark.parametrize("final", [True, False])
@pytest.mark.parametrize("as_layer", [True, False])
def test_softmax_free_only_as_final_classifier(final, as_layer):
    inputs = keras.Input((6,))
    if as_layer:
        x = L.Softmax(name="sm")(L.Dense(4, name="fc")(inputs))
    else:
        x = L.Dense(4, activation="softmax", name="fc")(inputs)
    if not final:
        x = L.Dense(2, name="out")(x)
    report = mntk.cost.estimate(keras.Model(inputs, x))
    soft = [r for r in report.layers if r.kind == "act:softmax"]
    assert (sum(r.mults for r in soft), sum(r.adds for r in soft)) == (
        (0, 0) if final else (2 * 4, 4))


def test_unknown_activation_is_an_error():
    model = single_layer(L.Dense(3, activation="elu", name="fc"), (4,))
    with pytest.raises(ValueError, match=r"'elu'.*'fc'.*register_rule"):
        mntk.cost.estimate(model)


@pytest.mark.parametrize("layer,input_shape,mults,adds", [
    # GAP: C mults + (H*W - 1)*C adds.
    (L.GlobalAveragePooling2D(name="p"), (5, 5, 3), 3, 24 * 3),
    # AveragePooling 2x2 stride 2 -> 2x2x3 outputs, each (4 - 1) adds + 1 mult.
    (L.AveragePooling2D(2, name="p"), (4, 4, 3), 12, 12 * 3),
    # MaxPooling 3x3 stride 1 valid -> 2x2x3 outputs, 8 comparisons each.
    (L.MaxPooling2D(3, strides=1, name="p"), (4, 4, 3), 12 * 8, 0),
    (L.GlobalMaxPooling2D(name="p"), (5, 5, 3), 24 * 3, 0),
])
def test_pooling(layer, input_shape, mults, adds):
    [row] = rows_of(mntk.cost.estimate(single_layer(layer, input_shape)), "p")
    assert (row.mults, row.adds, row.param_bits) == (mults, adds, 0)


@pytest.mark.parametrize("n_inputs", [2, 3])
def test_add_and_multiply(n_inputs):
    inputs = [keras.Input((4, 4, 2)) for _ in range(n_inputs)]
    gate = keras.Input((1, 1, 2))   # squeeze-excite style broadcast scale
    added = L.Add(name="add")(inputs)
    scaled = L.Multiply(name="mul")([added, gate])
    report = mntk.cost.estimate(keras.Model(inputs + [gate], scaled))
    [add], [mul] = rows_of(report, "add"), rows_of(report, "mul")
    assert (add.mults, add.adds) == (0, (n_inputs - 1) * 32)
    assert (mul.mults, mul.adds) == (32, 0)


@pytest.mark.parametrize("offset,adds,params", [(0.0, 0, 1), (-1.0, 1, 2)])
def test_rescaling(offset, adds, params):
    model = single_layer(L.Rescaling(1 / 255, offset=offset, name="rs"), (3, 3, 2))
    [row] = rows_of(mntk.cost.estimate(model), "rs")
    assert (row.mults, row.adds, row.param_bits) == (18, adds * 18, 32 * params)


def test_normalization():
    model = single_layer(L.Normalization(mean=[1.0, 2.0], variance=[1.0, 4.0], name="nm"),
                         (3, 3, 2))
    [row] = rows_of(mntk.cost.estimate(model), "nm")
    assert (row.mults, row.adds, row.param_bits) == (18, 18, 32 * 4)


def test_free_layers_cost_nothing():
    inputs = keras.Input((4, 4, 2))
    x = L.ZeroPadding2D(1)(inputs)
    x = L.Dropout(0.5)(x)
    x = L.Concatenate()([x, x])
    x = L.Reshape((6, 6 * 4))(x)
    x = L.Flatten()(x)
    report = mntk.cost.estimate(keras.Model(inputs, x))
    assert report.layers == [] and report.ops == 0 and report.params == 0


class Squash(L.Layer):
    def call(self, x):
        return x / (1.0 + abs(x))


def test_unknown_layer_error_and_register_rule():
    model = single_layer(Squash(name="sq"), (5,))
    with pytest.raises(ValueError, match=r"'sq'.*Squash.*register_rule"):
        mntk.cost.estimate(model)
    # |x| (1 mult), 1 + (1 add), divide (1 mult) per element.
    mntk.cost.register_rule(Squash, lambda layer, ctx: [ctx.elementwise("squash", 2, 1)])
    [row] = mntk.cost.estimate(model).layers
    assert (row.kind, row.mults, row.adds) == ("squash", 10, 5)


def set_kernel(layer, values):
    layer.kernel.assign(np.asarray(values, np.float32).reshape(layer.kernel.shape))


def test_ternary_kernel():
    layer = L.Conv2D(4, 3, padding="same", use_bias=False, name="t")
    model = single_layer(layer, (6, 6, 2))
    rng = np.random.default_rng(1)
    values = rng.choice([-0.3, 0.0, 0.7], size=(3, 3, 2, 4), p=[0.4, 0.3, 0.3])
    set_kernel(layer, values)
    [row] = rows_of(mntk.cost.estimate(model), "t")
    nnz = (values.reshape(-1, 4) != 0).sum(axis=0)
    n_spatial = 36
    # 2 mults per output element (Wp, Wn), (nnz_c - 1) adds per output;
    # storage: 1 sign bit per nonzero + the 1-bit mask + two 32-bit scales.
    assert row.kind == "conv:ternary"
    assert row.mults == 2 * 4 * n_spatial
    assert row.adds == (nnz - 1).sum() * n_spatial
    assert row.param_bits == nnz.sum() + values.size + 64
    assert row.ops == row.mults + row.adds


def test_binary_kernel():
    layer = L.Dense(4, use_bias=False, name="b")
    model = single_layer(layer, (8,))
    values = np.where(np.random.default_rng(2).random((8, 4)) < 0.5, -0.25, 0.25)
    set_kernel(layer, values)
    [row] = rows_of(mntk.cost.estimate(model), "b")
    # +-1 products at the input's bits (a 32-bit float input: 32 of them at
    # 32 bits), one 32-bit scale mult per output (4); 7 adds per output.
    # Storage: 1 bit per weight + one 32-bit scale (one alpha for the tensor).
    assert row.kind == "dense:binary" and row.encoding == "dense"
    assert (row.mults, row.adds) == (32 + 4, 28)
    assert row.ops == 36 + 28
    assert row.param_bits == 32 + 32


def test_binary_per_channel_scales_and_pruned_binary():
    layer = L.Conv2D(3, 3, use_bias=False, name="b")
    model = single_layer(layer, (5, 5, 2))          # 3x3 output, 18 weights/channel
    rng = np.random.default_rng(3)
    alphas = np.array([0.1, 0.2, 0.3])
    values = np.where(rng.random((3, 3, 2, 3)) < 0.5, -1.0, 1.0) * alphas
    set_kernel(layer, values)
    [row] = rows_of(mntk.cost.estimate(model), "b")
    assert row.kind == "conv:binary"
    # 18 * 3 * 9 sign products at 32 bits + 27 scale mults; 17 adds/output.
    assert (row.mults, row.adds) == (18 * 27 + 27, 17 * 27)
    assert row.param_bits == 54 + 3 * 32                 # 1 bit each + 3 scales
    values[rng.random(values.shape) < 0.5] = 0.0
    values[0, 0, 0, :] = alphas                           # no channel left empty
    set_kernel(layer, values)
    [row] = rows_of(mntk.cost.estimate(model), "b")
    nnz = (values.reshape(-1, 3) != 0).sum(axis=0)
    # Zeros need a third level: 1 sign bit per nonzero + the 1-bit mask.
    assert row.kind == "conv:binary" and row.encoding == "sparse"
    assert row.param_bits == nnz.sum() + 54 + 3 * 32
    assert (row.mults, row.adds) == (nnz.sum() * 9 + 27, (nnz - 1).sum() * 9)


@pytest.mark.slow
def test_binary_products_count_at_the_input_bits():
    """A BinaryScheme model under tfmot: int8 inputs make the +-1 products
    8-bit ops (not 1/32: int8 is two's complement, not sign-magnitude)."""
    inputs = keras.Input((6, 6, 2))
    x = L.Conv2D(4, 1, name="first")(inputs)
    x = L.Conv2D(5, 3, use_bias=False, name="c")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(3, name="fc")(x))
    q = mntk.quantization.quantize(model, scheme=mntk.quantization.BinaryScheme())
    report = mntk.cost.estimate(q)
    [row] = [r for r in report.layers if r.kind.endswith(":binary")]
    wrapper = q.get_layer(row.layer)
    assert row.kind == "conv+bn:binary" and wrapper.layer.name == "c"
    kernel = [v for v in wrapper.weights if v.name.endswith("kernel:0")][0].numpy()
    cols = np.sign(kernel).reshape(-1, 5)
    alpha = np.abs(kernel).reshape(-1, 5).mean(axis=0)
    assert np.all(alpha > 0)
    positions = 16                                       # 4x4 valid output
    # Hand count: 36 sign products per output at the 8-bit input width, one
    # 32-bit scale mult per output, 35 adds + 1 folded-BN bias add per output.
    assert row.mult_terms == [(36 * 5 * positions, 8.0), (5 * positions, 32.0)]
    assert row.adds == (35 + 1) * 5 * positions
    # 1 bit per weight, 5 per-channel alphas (the quantizer's cost_params),
    # 5 folded-BN biases at 32 bits.
    assert row.param_bits == cols.size + 5 * 32 + 5 * 32


def test_freebie_counts_params_and_mults_at_16():
    inputs = keras.Input((4, 4, 2))
    x = L.Conv2D(3, 3, padding="same", name="c")(inputs)
    x = L.ReLU(name="r")(x)
    x = L.GlobalAveragePooling2D(name="g")(x)
    model = keras.Model(inputs, L.Dense(2, name="fc")(x))
    full = mntk.cost.estimate(model)
    free = mntk.cost.estimate(model, freebie=True)
    assert free.param_bits == full.param_bits / 2
    assert free.raw_mults == full.raw_mults and free.raw_adds == full.raw_adds
    assert free.ops == pytest.approx(full.raw_mults * 16 / 32 + full.raw_adds)


def test_freebie_refused_below_16_bits():
    layer = L.Dense(4, use_bias=False, name="t")
    model = single_layer(layer, (8,))
    set_kernel(layer, np.tile([-1.0, 0.0, 2.0, 2.0], 8))
    with pytest.raises(ValueError, match=r"freebie=True refused.*'t'.*ternary"):
        mntk.cost.estimate(model, freebie=True)


@pytest.mark.parametrize("accumulator_bits", [16, 32])
def test_accumulator_bits_scale_adds(accumulator_bits):
    model = single_layer(L.Dense(3, name="fc"), (5,))
    report = mntk.cost.estimate(model, accumulator_bits=accumulator_bits)
    # 15 mults at 32 bits; 12 + 3 adds at the accumulator's bits.
    assert report.ops == 15 + 15 * accumulator_bits / 32


def test_heavily_pruned_float_kernel_is_not_ternary():
    """One positive and one negative weight left are float weights, not TTQ."""
    layer = L.DepthwiseConv2D(3, use_bias=False, name="d")
    model = single_layer(layer, (5, 5, 2))
    values = np.zeros((3, 3, 2, 1), np.float32)
    values[0, 0, 0, 0], values[1, 1, 1, 0] = 0.31, -0.17
    layer.depthwise_kernel.assign(values)
    [row] = rows_of(mntk.cost.estimate(model, freebie=True), "d")
    assert row.kind == "depthwise" and row.encoding == "sparse"
    assert row.param_bits == 2 * 16 + 18 and row.mults == 2 * 9


def test_tf_op_hard_swish_is_4_mults_1_add():
    """MobileNetV3's hard-swish from TF-op layers: x * relu6(x + 3) * (1/6)."""
    inputs = keras.Input((2, 2, 3))
    hard_sigmoid = L.ReLU(6.0, name="r6")(inputs + 3.0) * (1.0 / 6.0)
    x = L.Multiply(name="m")([inputs, hard_sigmoid])
    model = keras.Model(inputs, x)
    report = mntk.cost.estimate(model)
    n = 12
    assert (report.raw_mults, report.raw_adds) == (4 * n, 1 * n)
    kinds = sorted(r.kind for r in report.layers)
    assert kinds == ["act:relu6", "multiply", "tf:__operators__.add", "tf:math.multiply"]


def test_tf_op_residual_and_scale_follow_the_profile():
    import tensorflow as tf
    inputs = keras.Input((2, 2, 3))
    gate = keras.layers.GlobalAveragePooling2D(keepdims=True)(inputs)
    y = tf.math.multiply(inputs, tf.math.sigmoid(gate)) + inputs
    model = keras.Model(inputs, y)
    official = mntk.cost.estimate(model)
    kaist = mntk.cost.estimate(model, conventions="kaist")
    by_kind = {r.kind: (r.mults, r.adds) for r in official.layers}
    assert by_kind["tf:math.multiply"] == (12, 0)       # broadcast scale
    assert by_kind["tf:__operators__.add"] == (0, 12)   # residual add
    assert by_kind["act:sigmoid"] == (2 * 3, 3)
    assert {r.kind for r in kaist.layers} == {"global_avg_pool", "act:sigmoid"}


def test_unknown_tf_op_names_the_op_and_the_fix():
    import tensorflow as tf
    inputs = keras.Input((4,))
    model = keras.Model(inputs, tf.math.cumsum(inputs, axis=-1))
    with pytest.raises(ValueError, match=r"tf\.math\.cumsum.*register_tf_op\('math\.cumsum'"):
        mntk.cost.estimate(model)
    mntk.cost.register_tf_op(
        "math.cumsum", lambda layer, ctx: [ctx.elementwise("cumsum", 0, 1)])
    try:
        assert mntk.cost.estimate(model).raw_adds == 4
    finally:
        from mntk.cost import layer_rules
        del layer_rules._TF_OP_RULES["math.cumsum"]


def test_layer_normalization():
    model = single_layer(L.LayerNormalization(name="ln"), (5, 4))
    [row] = rows_of(mntk.cost.estimate(model), "ln")
    # 3 mults + 4 adds per element; gamma and beta (4 each) at 32 bits.
    assert (row.mults, row.adds, row.param_bits) == (3 * 20, 4 * 20, 32 * 8)
