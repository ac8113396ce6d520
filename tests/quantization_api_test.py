"""quantize(): schemes end to end on a tiny digits CNN, TFLite int8 export
(distinct values, agreement), refusals, skip, bit widths, cost counting."""
import numpy as np
import pytest

from mntk.compat import keras
import mntk
import mntk.quantization as mq
from _quantization_helpers import compile_model, tflite_kernels, tiny_model

SCHEMES = {
    "ternary": lambda: mq.TernaryScheme(),
    "learned": lambda: mq.LearnedPrecisionScheme(init_bits=4, min_bits=2, max_bits=8),
    "binary": lambda: mq.BinaryScheme(),
    "int8": lambda: "int8",
}


@pytest.fixture(scope="module")
def trained_float(digits_split):
    keras.utils.set_random_seed(0)
    x, y = digits_split[0]
    model = compile_model(tiny_model(), lr=1e-2)
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    # The BatchNorm moving statistics lag the weights after 8 short epochs
    # (momentum 0.99, 152 steps): at seed 0 the model was 98.7% accurate in
    # training mode and 32% in inference mode (measured), and QAT starting
    # there ended at 68-76% with near-tied logits, where one int8 rounding
    # step flips top-1. Set them to the whole training set's statistics.
    norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer in norms:
        layer.momentum = 0.99
    return model.get_weights(), x, y


def _float_model(trained_float):
    weights, x, y = trained_float
    model = tiny_model()
    model.set_weights(weights)
    return model, x, y


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCHEMES))
def test_tflite_int8_keeps_the_grid_and_agrees(kind, trained_float, tmp_path):
    model, x, y = _float_model(trained_float)
    q = compile_model(mq.quantize(model, scheme=SCHEMES[kind](), skip=[]), lr=1e-3)
    q.fit(x, y, epochs=1, batch_size=64, verbose=0)
    result = mntk.export.to_tflite(q, tmp_path / "q.tflite", quantize="int8",
                                   progress=False)
    kernels = tflite_kernels(result.path)
    effective = mq.quantized_weights(q)
    assert set(kernels) == set(effective), (kernels.keys(), effective.keys())
    for name, (ints, scales) in kernels.items():
        per_channel = [np.unique(ints[c]) for c in range(ints.shape[0])]
        if kind in ("ternary", "binary") and name == "dw":
            # depthwise kernels stay 8-bit per channel (the schemes' default)
            assert np.abs(ints).max() <= 127 and len(np.unique(ints)) > 3, name
        elif kind == "ternary":
            assert len(np.unique(ints)) <= 3, name
        elif kind == "binary":
            assert all(len(v[v != 0]) <= 2 for v in per_channel), name
        elif kind == "learned":
            # The Keras integers w_q / s_c are exactly the TFLite integers,
            # up to the sign a folded BatchNorm scale may flip per channel.
            w = effective[name]
            channels = w.shape[-1] if w.ndim == 2 or name != "dw" else w.shape[-2]
            keras_ints = np.moveaxis(w.reshape(-1, channels) if name != "dw"
                                     else w.reshape(-1, channels), -1, 0)
            wq = q.get_layer("quant_" + name)
            _, quantizer, qvars = wq._weight_vars[0]
            bits = np.broadcast_to(quantizer.cost_bits(qvars), (ints.shape[0],))
            levels = np.minimum(2 ** (bits - 1), 127)
            # exported at scale s_c / m_c, m_c = floor(127 / n_c), n_c = |lo_c|:
            # the TFLite integers are k * m_c with |k| <= n_c (the b-bit grid's
            # values; the sign may be flipped by a folded BatchNorm)
            multiple = np.floor(127 / levels)[:, None]
            flat = ints.reshape(ints.shape[0], -1).astype(float)
            np.testing.assert_array_equal(np.mod(flat, multiple), 0, err_msg=name)
            assert np.all(np.abs(flat / multiple) <= levels[:, None]), name
            step = np.abs(keras_ints).max(axis=1, keepdims=True)
            ratio = np.abs(keras_ints) / np.where(step == 0, 1, step)
            tfl_ratio = np.abs(flat) / np.maximum(np.abs(flat).max(1, keepdims=True), 1)
            np.testing.assert_allclose(np.sort(ratio, 1), np.sort(tfl_ratio, 1), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(SCHEMES))
def test_tflite_int8_agrees_with_keras(kind, trained_float, tmp_path):
    model, x, y = _float_model(trained_float)
    # the schemes' default skip: ternary/binary keep the first conv and last
    # Dense float, as TTQ did (all-ternary, the 8x8 model reaches only ~50%)
    q = compile_model(mq.quantize(model, scheme=SCHEMES[kind]()), lr=3e-3)
    # 5 epochs: after 1 the low-bit models are ~30-75% accurate, with
    # near-tied logits whose top-1 a one-step int8 rounding can flip.
    q.fit(x, y, epochs=5, batch_size=64, verbose=0)
    result = mntk.export.to_tflite(q, tmp_path / "q.tflite", quantize="int8",
                                   progress=False)
    parity = mntk.export.verify(result.path, q, (x[:600], y[:600]))
    spread = float(np.std(q.predict(x[:600], verbose=0)))
    # where a QAT model is far from accurate (before the fixture set the
    # BatchNorm statistics, 50-76% here) its logits are near-tied and one
    # int8 rounding step flips top-1, so the logits must then be close
    # instead: within 15% of their spread (measured: 0.24-0.30 against
    # spreads of about 2.8)
    assert parity.agreement >= 0.99 or parity.max_abs_diff <= 0.15 * max(spread, 1.0), (
        parity.to_dict(), spread)


def test_ternary_effective_kernels_have_three_values():
    q = mq.quantize(tiny_model(), scheme=mq.TernaryScheme(depthwise="same"), skip=[])
    for name, kernel in mq.quantized_weights(q).items():
        assert len(np.unique(kernel)) <= 3, name


@pytest.mark.slow
@pytest.mark.parametrize("scheme", [mq.TernaryScheme, mq.BinaryScheme])
def test_depthwise_kernels_default_to_8_bits(scheme):
    q = mq.quantize(tiny_model(), scheme=scheme(), skip=[])
    bits = mq.bit_widths(q)
    assert bits["dw"]["weights"] == 8.0
    assert bits["pw"]["weights"] == 1.0
    dw = mq.quantized_weights(q)["dw"].reshape(-1, 8)
    assert max(len(np.unique(dw[:, c])) for c in range(8)) > 3
    with pytest.raises(ValueError, match="depthwise"):
        scheme(depthwise="float")


def test_learned_scheme_keeps_model_outputs_at_8_bits():
    scheme = mq.LearnedPrecisionScheme(init_bits=4)
    q = mq.quantize(tiny_model(), scheme=scheme, skip=[])
    bits = mq.bit_widths(q)
    assert bits["logits"]["activations"] == 8.0
    assert bits["fc"]["activations"] == 4.0 and bits["logits"]["weights"] == 4.0
    assert scheme.model_output_names == frozenset()  # the caller's scheme is untouched


def test_binary_has_two_values_per_channel():
    q = mq.quantize(tiny_model(), scheme=mq.BinaryScheme(depthwise="same"), skip=[])
    kernels = mq.quantized_weights(q)
    for name in ("stem", "pw"):
        k = kernels[name].reshape(-1, kernels[name].shape[-1])
        for c in range(k.shape[1]):
            values = np.unique(k[:, c])
            assert len(values) == 2 and np.isclose(values[0], -values[1]), name
    dw = kernels["dw"].reshape(-1, 8)
    assert all(len(np.unique(dw[:, c])) == 2 for c in range(8))


@pytest.mark.slow
def test_default_skip_keeps_first_conv_and_last_dense_float():
    model = tiny_model()
    assert mq.default_skip(model) == {"stem", "stem_bn", "logits"}
    q = mq.quantize(model, scheme=mq.TernaryScheme())
    names = {l.name for l in q.layers}
    assert {"stem", "logits"} <= names and "quant_stem" not in names
    assert set(mq.quantized_weights(q)) == {"dw", "pw", "fc"}
    q8 = mq.quantize(model, scheme="int8")
    assert set(mq.quantized_weights(q8)) == {"stem", "dw", "pw", "fc", "logits"}


def test_skip_by_predicate_and_unknown_name():
    q = mq.quantize(tiny_model(), scheme=mq.TernaryScheme(),
                    skip=lambda layer: isinstance(layer, keras.layers.Dense))
    assert set(mq.quantized_weights(q)) == {"stem", "dw", "pw"}
    with pytest.raises(ValueError, match="nope"):
        mq.quantize(tiny_model(), scheme=mq.TernaryScheme(), skip=["nope"])


def test_bit_widths_report_scheme_bits():
    q = mq.quantize(tiny_model(), scheme=mq.LearnedPrecisionScheme(init_bits=4), skip=[])
    bits = mq.bit_widths(q)
    assert bits["pw"]["weights"] == 4.0
    assert bits["pw_relu"]["activations"] == 4.0
    assert mq.mean_weight_bits(q) == 4.0
    t = mq.quantize(tiny_model(), scheme=mq.TernaryScheme())
    assert mq.bit_widths(t)["pw"]["weights"] == 1.0


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.d = keras.layers.Dense(2)

    def call(self, x):
        return self.d(x)


def test_refuses_subclassed_and_non_keras_flattens_nested():
    sub = _Subclassed()
    sub.build((None, 3))
    with pytest.raises(ValueError, match="Functional API"):
        mq.quantize(sub, scheme=mq.TernaryScheme())
    inner = tiny_model()
    x = keras.Input((8, 8, 1))
    outer = keras.Model(x, inner(x))
    q = mq.quantize(outer, scheme="int8")  # nested model flattened first
    assert not any(isinstance(l, keras.Model) for l in q.layers)
    assert outer.layers[1] is inner and not any(
        type(l).__name__.startswith("Quantize") for l in inner.layers)
    with pytest.raises(TypeError, match="Keras"):
        mq.quantize(object(), scheme="int8")
    with pytest.raises(ValueError, match="int8"):
        mq.quantize(tiny_model(), scheme="int4")


@pytest.mark.slow
def test_cost_counts_ternary_layer_at_two_multiplies_per_output():
    q = mq.quantize(tiny_model(), scheme=mq.TernaryScheme(), skip=[])
    report = mntk.cost.estimate(q)
    rows = [r for r in report.layers if r.layer in ("pw", "quant_pw")]
    assert rows, [r.layer for r in report.layers]
    # pw: 1x1 conv 8 -> 16 channels on 8x8: 64*16 outputs, 2 multiplies each.
    assert rows[0].mults == pytest.approx(2 * 8 * 8 * 16)


def _preprocessed_model():
    rng = np.random.RandomState(0)
    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Rescaling(1 / 16.0, name="scale")(inp)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(rng.rand(50, 8, 8, 1) * 0.5 + 0.3)
    h = norm(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="logits")(h), name="pre")


@pytest.mark.slow
@pytest.mark.parametrize("skip", [None, ["norm"]])
def test_quantize_keeps_preprocessing_float_with_its_state_and_the_model_untouched(
        skip, tmp_path, digits_split):
    model = _preprocessed_model()
    weights = [w.copy() for w in model.get_weights()]
    config = model.to_json()
    ids = [id(l) for l in model.layers]
    q = mq.quantize(model, scheme="int8", skip=skip)
    kinds = {l.name: type(l).__name__ for l in q.layers}
    assert kinds["scale"] == "Rescaling" and kinds["norm"] == "Normalization"
    np.testing.assert_allclose(np.ravel(q.get_layer("norm").mean),
                               np.ravel(model.get_layer("norm").mean), rtol=1e-6)
    x = digits_split[0][0][:32, :8, :8] * 16.0
    np.testing.assert_allclose(q.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=0.15)  # int8 fake quantization, untrained ranges
    path = str(tmp_path / "q.h5")
    q.save(path)
    np.testing.assert_allclose(mntk.load_model(path).predict(x, verbose=0),
                               q.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert model.to_json() == config and [id(l) for l in model.layers] == ids
