"""Per-channel learned activation grids (LearnedPrecisionActivationQuantizer(
per_channel=True)): the forward against numpy, gradients per channel, config
and save/load, mntk.cost, and the TFLite export on one grid per tensor."""
import numpy as np
import pytest
import tensorflow as tf

import mntk
import mntk.quantization as mq
from mntk.compat import keras
from mntk.quantization import _per_channel


def _small():
    """conv -> ReLU -> conv -> GAP -> Dense: two per-channel activations feed convs."""
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(x, keras.layers.Dense(10, name="logits")(h), name="small")


def _np_grid(x, gamma, alpha, beta, min_bits=2, max_bits=8):
    """Texas-EIC's range scale/shift and 2^b levels, per channel (last axis),
    written from the formula in learned.py's docstring."""
    axes = tuple(range(x.ndim - 1))
    lo0 = np.minimum(x.min(axes), 0.0)
    hi0 = np.maximum(x.max(axes), 1e-3)
    bits = np.clip(np.round(8.0 * gamma), min_bits, max_bits)
    width0 = hi0 - lo0
    lo = np.minimum(lo0 + beta * width0, 0.0)
    hi = np.maximum(lo + alpha * width0, 1e-3)
    step = (hi - lo) / (2.0 ** bits - 1.0)
    lo_grid = -np.round(-lo / step) * step
    return lo_grid, lo_grid + (hi - lo), step, bits


def _quantizer(x, gamma, alpha, beta):
    q = mq.LearnedPrecisionActivationQuantizer(8, 2, 8, per_channel=True)
    qvars = q.build(x.shape, "act", keras.layers.Layer())
    q(tf.constant(x), True, qvars)  # calibrates lo0, hi0 per channel
    for key, value in (("gamma", gamma), ("alpha", alpha), ("beta", beta)):
        qvars[key].assign(value)
    return q, qvars


# one channel per case: 2, 3, 5, 8 bits; a narrowed, a shifted, a widened range
GAMMA = np.array([2, 3, 5, 8], np.float32) / 8.0
ALPHA = np.array([0.5, 1.0, 2.0, 1.3], np.float32)
BETA = np.array([0.0, -0.3, 0.2, 0.0], np.float32)


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 5, 4)).astype(np.float32) * [1.0, 3.0, 0.5, 2.0]
    return (x + [0.5, 0.0, 1.0, -1.0]).astype(np.float32)


def test_per_channel_forward_matches_numpy_grid():
    x = _data()
    q, qvars = _quantizer(x, GAMMA, ALPHA, BETA)
    lo, hi, step, bits = _np_grid(x, GAMMA, ALPHA, BETA)
    expected = np.round(np.clip(x, lo, hi) / step) * step
    for training in (True, False):
        out = q(tf.constant(x), training, qvars).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    for c, b in enumerate(bits):  # b bits are 2^b levels, channel by channel
        levels = np.unique(np.round(q(tf.constant(x), False, qvars).numpy()[..., c] / step[c]))
        assert len(levels) <= 2 ** b
    assert len(np.unique(expected[..., 0])) == 4  # the 2-bit channel uses all 4 levels
    np.testing.assert_array_equal(q.cost_bits(qvars), [2, 3, 5, 8])


def test_per_channel_gradients_reach_every_channel_as_the_fused_op_does():
    """Each channel's gamma/alpha/beta get the gradient the per-tensor fused
    op (its own hand-written backward) gives on that channel alone."""
    x = _data(1)
    upstream = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    q, qvars = _quantizer(x, GAMMA, ALPHA, BETA)
    keys = ("gamma", "alpha", "beta")
    with tf.GradientTape() as tape:
        y = q(tf.constant(x), True, qvars)
        loss = tf.reduce_sum(y * upstream)
    grads = dict(zip(keys, tape.gradient(loss, [qvars[k] for k in keys])))
    for key in ("gamma", "alpha"):
        assert np.all(grads[key].numpy() != 0.0), (key, grads[key])
    # beta too (the zero point's rounding is straight-through), where values
    # fall outside the range; channel 3 (alpha 1.3, beta 0) holds them all
    assert np.all(grads["beta"].numpy()[:3] != 0.0) and grads["beta"].numpy()[3] == 0.0
    single = mq.LearnedPrecisionActivationQuantizer(8, 2, 8)
    for c in range(x.shape[-1]):
        svars = single.build(None, f"c{c}", keras.layers.Layer())
        single(tf.constant(x[..., c]), True, svars)
        for key, values in (("gamma", GAMMA), ("alpha", ALPHA), ("beta", BETA)):
            svars[key].assign(values[c])
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(single(tf.constant(x[..., c]), True, svars) * upstream[..., c])
        expected = tape.gradient(loss, [svars[k] for k in keys])
        for key, g in zip(keys, expected):
            np.testing.assert_allclose(grads[key].numpy()[c], g.numpy(), rtol=1e-3,
                                       atol=1e-4, err_msg=f"{key} of channel {c}")  # sum order


@pytest.fixture(scope="module")
def small_pc(digits_split):
    """_small quantized with 2-bit weights and 4-bit per-channel activations,
    ranges calibrated on 128 digits (tests restore what they change)."""
    x = digits_split[0][0][:128]
    model = mq.quantize(_small(), scheme=mq.LearnedPrecisionScheme(
        init_bits=2, activation_init_bits=4, activation_per_channel=True), skip=[])
    model(x, training=True)
    return model, x


def _c1_vars(model):
    return model.get_layer("quant_c1")._quantize_activations[0]._post_activation_vars


def test_per_channel_config_round_trip_and_save_load(tmp_path, small_pc):
    q = mq.LearnedPrecisionActivationQuantizer(6, 3, 8, per_channel=True)
    again = mq.LearnedPrecisionActivationQuantizer.from_config(q.get_config())
    assert again == q and again.per_channel
    assert mq.LearnedPrecisionActivationQuantizer().per_channel is False
    model, x = small_pc
    assert _c1_vars(model)["alpha"].shape == (8,)
    path = str(tmp_path / "pc.h5")
    model.save(path)
    np.testing.assert_allclose(mntk.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_per_channel_cost_counts_the_widest_channel(small_pc):
    """A multiply reads one input channel, so mntk.cost and the differentiable
    score count a per-channel tensor at its widest channel (an upper bound;
    c2's weights have 2 bits, so its multiplies are at the input's bits)."""
    model, _ = small_pc
    gamma = _c1_vars(model)["gamma"]
    target = mq.CostTarget(model, score=1e-9)
    before = gamma.numpy()

    def scores(bits):
        gamma.assign(np.asarray(bits, np.float32) / 8.0)
        with tf.GradientTape() as tape:
            value = target.value()
        return (mntk.cost.estimate(model, task="imagenet").score, float(value),
                tape.gradient(value, gamma).numpy())
    try:
        mixed, mixed_soft, grad = scores([3] * 7 + [5])
        widest, widest_soft, _ = scores([5] * 8)
        narrow, _, _ = scores([3] * 8)
        assert mq.bit_widths(model)["c1"]["activations"] == 3.0
    finally:
        gamma.assign(before)
    assert mixed == pytest.approx(widest, rel=1e-9) and narrow < mixed
    assert mixed_soft == pytest.approx(mixed, rel=1e-4)
    assert widest_soft == pytest.approx(widest, rel=1e-4)
    assert grad[-1] > 0.0 and np.all(grad[:-1] == 0.0)  # the widest channel's


def test_export_maps_per_channel_grids_on_one_int8_grid(tmp_path, small_pc, capfd):
    """TFLite gets the per-tensor union grid with per-channel clips (the
    export form), within one output step of Keras's export form; the Keras
    model itself stays per channel, and export says so."""
    model, x = small_pc
    result = mntk.export.to_tflite(model, tmp_path / "pc.tflite", quantize="int8",
                                   progress=False)
    assert result.float_ops == ()
    note = capfd.readouterr().err
    assert "per-channel activation grids of quant_c1, quant_c2" in note
    assert "per_channel=False" in note
    with _per_channel.per_tensor_export():
        export_form = model(x, training=False).numpy()
    per_channel = model(x, training=False).numpy()
    assert np.abs(export_form - per_channel).max() > 0.0
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=result.path)
    inp = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    out = interpreter.get_output_details()[0]
    tflite = interpreter.get_tensor(out["index"])
    scale = out["quantization_parameters"]["scales"]
    scale = float(scale[0]) if len(scale) else 0.0
    # the logits' own 8-bit step (or float output): one step of int rounding
    logit_q = model.get_layer("quant_logits")._quantize_activations[0]
    step = float(logit_q.quantizer.grid(logit_q._post_activation_vars)[2])
    assert np.abs(tflite - export_form).max() <= 1.01 * max(step, scale)


def test_union_grid_holds_every_channel_with_zero_on_it():
    v = {"lo": tf.constant([-1.0, 0.0, -0.3]), "hi": tf.constant([0.5, 4.0, 1.0])}
    low, high, step = (float(t) for t in _per_channel.union_grid(v))
    assert step == pytest.approx(5.0 / 255.0)
    assert low <= -1.0 + step / 2 and high >= 4.0 - step / 2
    assert (-low / step) == pytest.approx(round(-low / step), abs=1e-4)


def test_recipe_field_turns_per_channel_activations_on():
    from mntk.train.schema import resolve
    from mntk.train.stages.quantize import make_scheme
    from recipes import digits
    on = resolve(digits.get_config(), [("quantize.scheme", "learned"),
                                       ("quantize.activation_per_channel", "true")])
    assert make_scheme(on.quantize).activation_quantizer().per_channel
    off = resolve(digits.get_config(), [("quantize.scheme", "learned")])
    assert not make_scheme(off.quantize).activation_quantizer().per_channel


def test_quantizer_ranges_of_per_channel_grids_are_the_union(small_pc):
    """quantization.transfer reads a per-channel quantizer as its channels'
    union range and starts every channel from a given per-tensor range."""
    from mntk.quantization.transfer import load_quantizer_ranges, quantizer_ranges
    model, _ = small_pc
    v = _c1_vars(model)
    saved = model.get_weights()
    try:
        width = v["hi"].numpy() - v["lo"].numpy()
        v["alpha"].assign(np.linspace(0.5, 1.5, 8).astype(np.float32))
        lo0, alpha = v["lo"].numpy(), v["alpha"].numpy()
        lo, hi = quantizer_ranges(model)["quant_c1/post_activation"]
        assert lo == pytest.approx(lo0.min()) and hi == pytest.approx(
            (lo0 + alpha * width).max(), rel=1e-6)
        load_quantizer_ranges(model, {k: (-0.5, 3.0) for k in quantizer_ranges(model)},
                              kernels=False)
        np.testing.assert_array_equal(v["lo"].numpy(), np.full(8, -0.5, np.float32))
        np.testing.assert_array_equal(v["alpha"].numpy(), np.ones(8, np.float32))
    finally:
        model.set_weights(saved)
