"""Every capability on users' models: keras.applications backbones (random
weights, smallest inputs) and a functional CNN with Rescaling + Normalization +
a nested backbone. Slow: a matrix of model x capability (issue 14).

Each model is built once per module; every cell works on its own copy
(``mntk.prepare``), so the cells are independent, except that the int8 cell's
QAT copy is also the one the save/load cell saves (one quantization less),
and the prune and quantize cells start from one logits copy (both copy what
they are given and leave it untouched: tests/pruning_test.py,
tests/quantization_api_test.py).

CI runs the functional CNN and MobileNetV3Small's first four bottlenecks
("MobileNetV3Small-4blocks": keras.applications' own MobileNetV3 builder and
block function; TF-op hard-swish, squeeze-excite, Rescaling, a 1x1 conv
classifier) with the int8 and ternary schemes, to keep CI short: the full
MobileNetV3Small's row took 2.7x its CPU time (109 s against 41 s on one core;
tracing, cloning and conversion grow with the layer count, 239 against 79).
``MNTK_APPLICATIONS=all`` runs the whole matrix (every model, every scheme).
"""
import functools
import os
import sys

import numpy as np
import pytest

import mntk
from mntk import prepare, softmax_heads
from mntk.compat import keras

pytestmark = pytest.mark.slow

SIZE = 32
A = keras.applications


def _cnn():
    """Rescaling + adapted Normalization + a nested functional backbone."""
    inp = keras.Input((SIZE, SIZE, 3), name="image")
    h = keras.layers.Rescaling(1 / 255.0, name="scale")(inp)
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(_data()[0][:64] / 255.0)
    h = norm(h)
    bb_in = keras.Input((SIZE, SIZE, 3))
    b = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="b1")(bb_in)
    b = keras.layers.BatchNormalization(name="b1_bn")(b)
    b = keras.layers.ReLU(name="b1_out")(b)
    b = keras.layers.Conv2D(32, 3, strides=2, padding="same", name="b2")(b)
    b = keras.layers.BatchNormalization(name="b2_bn")(b)
    b = keras.layers.ReLU(name="b2_out")(b)
    h = keras.Model(bb_in, b, name="backbone")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(10, activation="softmax", name="predictions")(h)
    return keras.Model(inp, out, name="cnn")


#: MobileNetV3-Small's first four bottlenecks (Howard et al., "Searching for
#: MobileNetV3", ICCV 2019, Table 2): expansion ratio (expanded / input
#: channels), output channels, kernel, stride, squeeze-excite, hard-swish
#: (else ReLU). They hold every layer kind of the whole network.
V3_SMALL_FIRST = [(1, 16, 3, 2, True, False), (72 / 16, 24, 3, 2, False, False),
                  (88 / 24, 24, 3, 1, False, False), (4, 40, 5, 2, True, True)]


def _mobilenet_v3_small_4blocks():
    """MobileNetV3Small cut after its fourth bottleneck, built by
    keras.applications' own code (its ``MobileNetV3`` builder: Rescaling,
    stem, head; its ``_inverted_res_block``), so the layers up to the cut are
    the full model's (``test_ci_row_is_mobilenet_v3_small_cut_short``)."""
    mnv3 = sys.modules[A.MobileNetV3Small.__module__]

    def stack(x, kernel, activation, se_ratio):
        for i, (expansion, filters, k, stride, se, hs) in enumerate(V3_SMALL_FIRST):
            x = mnv3._inverted_res_block(x, expansion, filters, k, stride,
                                         se_ratio if se else None,
                                         activation if hs else mnv3.relu, i)
        return x

    return mnv3.MobileNetV3(stack, 1024, (SIZE, SIZE, 3), model_type="small", weights=None,
                            classes=10)


BUILDERS = {
    "MobileNetV2-0.35": lambda: A.MobileNetV2((SIZE, SIZE, 3), alpha=0.35, weights=None,
                                              classes=10),
    "MobileNetV3Small": lambda: A.MobileNetV3Small((SIZE, SIZE, 3), weights=None, classes=10),
    "MobileNetV3Small-4blocks": _mobilenet_v3_small_4blocks,
    "MobileNetV3Small-min": lambda: A.MobileNetV3Small((SIZE, SIZE, 3), weights=None,
                                                       classes=10, minimalistic=True),
    # (EfficientNetB0's and ResNet50V2's first argument is include_top)
    "EfficientNetB0": lambda: A.EfficientNetB0(input_shape=(SIZE, SIZE, 3), weights=None,
                                               classes=10),
    "ResNet50V2": lambda: A.ResNet50V2(input_shape=(SIZE, SIZE, 3), weights=None, classes=10),
    "CNN": _cnn,
}
#: input range each model expects (built-in preprocessing takes 0..255)
SCALE = {"MobileNetV2-0.35": 1 / 127.5, "ResNet50V2": 1 / 127.5}


@functools.lru_cache(None)
def _data():
    """digits 8x8 -> 32x32 RGB in 0..255, labels."""
    from sklearn.datasets import load_digits
    d = load_digits()
    x = np.kron(d.images / 16.0, np.ones((4, 4)))[..., None].repeat(3, -1) * 255.0
    return x.astype("float32"), d.target.astype("int64")


def _inputs(name, n=64, offset=0):
    x, y = _data()
    x = x[offset:offset + n]
    if name in SCALE:
        x = x * SCALE[name] - 1.0
    return x, y[offset:offset + n]


FULL = os.environ.get("MNTK_APPLICATIONS", "") == "all"
MODELS = sorted(BUILDERS) if FULL else ["CNN", "MobileNetV3Small-4blocks"]


@pytest.fixture(scope="module", params=MODELS)
def app(request):
    keras.backend.clear_session()
    return request.param, BUILDERS[request.param]()


@pytest.fixture(scope="module")
def logits_model(app):
    """The app with its softmax head made a logits head, once per model."""
    return softmax_heads.to_logits(app[1])


@pytest.fixture(scope="module")
def int8_qat(app, logits_model):
    """The app's int8 QAT copy (logits head, activation ranges from its
    data), quantized once: the int8 cell fits and exports it, the save/load
    cell saves and reloads it."""
    return mntk.quantization.quantize(logits_model, scheme="int8",
                                      calibration_data=_inputs(app[0], 64)[0])


def test_ci_row_is_mobilenet_v3_small_cut_short():
    """The CI row's layers up to its cut are MobileNetV3Small's (same kinds,
    same configs, in the same order), and its head is MobileNetV3Small's
    head; only the head's first 1x1 conv is narrower (6x the channels at the
    cut, as the builder sets it)."""
    def rows(layers):
        # TF-op layers are named by a global counter: compare what they compute
        return [(type(l).__name__, {k: v for k, v in l.get_config().items()
                                    if k != "name" or type(l).__name__ != "TFOpLambda"})
                for l in layers]
    keras.backend.clear_session()
    full = BUILDERS["MobileNetV3Small"]()
    keras.backend.clear_session()
    cut = BUILDERS["MobileNetV3Small-4blocks"]()
    end = [l.name for l in cut.layers].index("expanded_conv_3/project/BatchNorm") + 1
    assert rows(cut.layers[:end]) == rows(full.layers[:end])
    head = len(cut.layers) - end
    assert [type(l).__name__ for l in cut.layers[end:]] == [
        type(l).__name__ for l in full.layers[-head:]]
    assert cut.get_layer("Conv_1").filters == 6 * 40 and full.get_layer("Conv_1").filters == 6 * 96
    assert sum(type(l).__name__ == "TFOpLambda" for l in cut.layers) >= 10


# Every cell fits a step or two, eagerly: tracing the train step of
# MobileNetV3Small's QAT model took 30 s CPU against 4 s for the two eager
# steps (predict: 5 s against 2 s). Graph-mode training of the same layer
# kinds (depthwise, squeeze-excite, hard-swish, QAT wrappers) is what the
# recipe smoke runs and the demo do.
EAGER = True


def _ce(model, lr=1e-3, from_logits=True):
    model.compile(keras.optimizers.Adam(lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
                  metrics=["accuracy"], run_eagerly=EAGER)
    return model


def _outputs(model, x):
    """The model called on ``x`` in inference mode (eager: no predict trace)."""
    return np.asarray(model(x, training=False))


def _hand_kernel_mults(model):
    """Multiplies of every conv/dense kernel, counted from the layer configs:
    k_h k_w c_in H' W' c_out (Conv2D), k_h k_w C H' W' (depthwise), c_in c_out (Dense)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += _hand_kernel_mults(layer)
            continue
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kh, kw = layer.kernel_size
            _, h, w, c = layer.output_shape
            total += kh * kw * h * w * c
        elif isinstance(layer, keras.layers.Conv2D):
            kh, kw = layer.kernel_size
            cin = layer.input_shape[-1]
            _, h, w, cout = layer.output_shape
            total += kh * kw * cin * h * w * cout
        elif isinstance(layer, keras.layers.Dense):
            total += layer.input_shape[-1] * layer.units
    return total


def _kernel_rows(report):
    return [r for r in report.layers
            if r.kind.split(":")[0].split("+")[0] in ("conv", "conv2d", "depthwise", "dense")]


def test_cost_matches_hand_count(app):
    name, model = app
    # the model as the user gave it (nested backbone, TF-op layers) and its
    # prepared copy count the same kernel multiplies as the hand count
    report = mntk.cost.estimate(model)
    assert sum(r.mults for r in _kernel_rows(report)) == _hand_kernel_mults(model)
    prepared = mntk.cost.estimate(prepare.prepare(model))
    assert sum(r.mults for r in _kernel_rows(prepared)) == _hand_kernel_mults(model)


def test_srip_and_one_step(app):
    name, model = app
    copy = softmax_heads.to_logits(model, prepare_graph=True)
    srip = mntk.regularizers.apply_srip(copy, coefficient=1e-3, layers="conv")
    assert srip.layer_names
    x, y = _inputs(name, 16)
    history = _ce(copy).fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_adaptive_smoothing_on_the_models_own_head(app):
    name, model = app
    _, classifier = softmax_heads.softmax_head(model)
    with pytest.raises(ValueError, match="to_logits"):
        mntk.losses.AdaptiveLabelSmoothing(classifier)
    logits = softmax_heads.to_logits(model, prepare_graph=True)
    loss = mntk.losses.AdaptiveLabelSmoothing(logits.get_layer(classifier.name), epsilon=0.3)
    logits.compile(keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=EAGER)
    x, y = _inputs(name, 16)
    history = logits.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[loss.callback()])
    assert np.isfinite(history.history["loss"][0])


def test_early_exit_train_calibrate_staged_tflite(app, tmp_path):
    name, model = app
    with pytest.warns(UserWarning, match="softmax"):
        multi = mntk.early_exit.add_exits(model, at=[0.3, 0.6], head="linear")
    exits = [multi.get_layer(f"exit_{i}") for i in range(2)]
    feeds = [e._inbound_nodes[0].inbound_layers for e in exits]
    assert len({id(f) for f in feeds}) == 2  # distinct exit points
    mntk.early_exit.compile_exits(multi, keras.optimizers.Adam(1e-3))
    multi.run_eagerly = EAGER
    x, y = _inputs(name, 32)
    multi.fit(x, [y] * 3, batch_size=16, epochs=1, verbose=0)
    cal = mntk.early_exit.calibrate(multi, (x, y), exit_rate=0.5, verbose=0)
    mntk.export.to_tflite_staged(multi, cal, str(tmp_path / "staged"), progress=False)
    logits, exit_index = mntk.export.StagedRunner(str(tmp_path / "staged")).predict(x[:8])
    keras_logits, keras_exit = mntk.early_exit.EarlyExitRunner(multi, cal).predict(x[:8])
    # A barely trained backbone's exit confidences crowd around the 50%-rate
    # threshold, so float TFLite's rounding can move a sample across it. The
    # runners may differ only there: at the first exit where they part, the
    # sample's Keras confidence lies within 1e-3 of that exit's threshold.
    same = exit_index == keras_exit
    outputs = [np.asarray(o) for o in multi(x[:8], training=False)]
    for s in np.flatnonzero(~same):
        k = int(min(exit_index[s], keras_exit[s]))
        z = outputs[k][s] - outputs[k][s].max()
        conf = np.exp(z).max() / np.exp(z).sum()
        assert abs(conf - cal.thresholds[k]) < 1e-3, (s, k, conf, cal.thresholds)
    np.testing.assert_allclose(logits[same], keras_logits[same], atol=1e-3)


def test_prune_strip_estimate(app, logits_model):
    name, model = app
    pruned = _ce(mntk.pruning.prune(logits_model, target=0.5, steps_per_epoch=1, epochs=1))
    x, y = _inputs(name, 16)
    pruned.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=mntk.pruning.callbacks())
    stripped = mntk.pruning.strip(pruned)
    assert mntk.cost.estimate(stripped).params < 0.75 * mntk.cost.estimate(model).params


SCHEMES = {"int8": lambda: "int8", "ternary": lambda: mntk.quantization.TernaryScheme(),
           "learned": lambda: mntk.quantization.LearnedPrecisionScheme(),
           "binary": lambda: mntk.quantization.BinaryScheme()}


@pytest.mark.parametrize("scheme", sorted(SCHEMES) if FULL else ["int8", "ternary"])
def test_quantize_fit_export_verify(app, logits_model, scheme, tmp_path, request):
    name, model = app
    x, y = _inputs(name, 64)
    # activation ranges from the data, not tfmot's [-6, 6] start (which two fit
    # steps barely move: EfficientNetB0 agreed on 0.32 of inputs without this)
    q = _ce(request.getfixturevalue("int8_qat") if scheme == "int8" else
            mntk.quantization.quantize(logits_model, scheme=SCHEMES[scheme](), calibration_data=x))
    q.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # Two Adam steps from random weights grow some activations' scale up to
    # 1400x (EfficientNetB0's head), which tfmot's moving average (decay 0.999)
    # cannot follow: set the ranges from the data again before export, as after
    # any fit too short for the averages to settle.
    mntk.quantization.calibrate_ranges(q, x)
    result = mntk.export.to_tflite(q, str(tmp_path / "q.tflite"), quantize="int8",
                                   progress=False)
    held_out = _inputs(name, 128, offset=256)
    check = mntk.export.verify(result, q, held_out)
    keras_logits = _outputs(q, held_out[0])
    step, on_grid = _output_step(q, keras_logits)
    spread = float(np.mean(np.std(keras_logits, axis=0)))  # how the logits vary with the input
    # What int8 rounding alone moves these logits by: the same file run by
    # LiteRT's two int8 kernel sets (XNNPACK, float requantization; the builtin
    # reference kernels, fixed-point requantization). A conversion error is in
    # the file, so both run it alike: it does not widen this figure.
    own = np.abs(_litert_logits(result.path, held_out[0], "xnnpack")
                 - _litert_logits(result.path, held_out[0], "builtin")).max() / step
    print(f"\n{name} {scheme}: agreement {check.agreement} max |diff| {check.max_abs_diff:.4g} "
          f"= {check.max_abs_diff / step:.3g} output steps (LiteRT's two kernel sets: "
          f"{own:.3g}); logit range {np.ptp(keras_logits):.4g}, input-dependence {spread:.4g}")
    # the logits span many steps of their 8-bit grid (constant logits, as on
    # an uncalibrated [-6, 6] grid, would agree trivially) ... (a float head
    # has no grid: its step is 1/255 of the logits' range by definition)
    if on_grid:
        assert np.ptp(keras_logits) > 20 * step, (np.ptp(keras_logits), step)
    # ... and the file computes them: same class, or (near-tied logits of a
    # barely trained backbone) within a few steps of that grid, or within twice
    # what LiteRT's two kernel sets differ by on this file (Keras's float
    # fake-quant is a third rounding order: ResNet50V2's 16 residual blocks
    # carry each one's flips to the logits, 12-20 steps between the two kernel
    # sets and 13-26 from Keras, BUILD.md "The applications matrix")
    tolerance = max(4.0, 2.0 * own)
    assert check.agreement >= 0.99 or check.max_abs_diff <= tolerance * step, (
        check.agreement, check.max_abs_diff / step, own)


def _litert_logits(path, x, kernels):
    """The file's float output on ``x`` from LiteRT itself (not mntk.export):
    ``kernels`` "xnnpack" (LiteRT's default CPU set-up) or "builtin" (its
    reference kernels only). int8 input/output tensors are (de)quantized with
    their own scale and zero point: q = round(x / s) + z, x = (q - z) s."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    resolver = (OpResolverType.AUTO if kernels == "xnnpack" else
                OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=resolver).get_signature_runner()
    (in_name, inp), = runner.get_input_details().items()
    (out_name, out), = runner.get_output_details().items()
    feed = np.asarray(x, np.float32)
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        feed = np.clip(np.round(feed / scale) + zero, info.min, info.max).astype(inp["dtype"])
    y = runner(**{in_name: feed})[out_name]
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y


def _output_step(q, logits):
    """(step, True): one step of the 8-bit grid of the tensor the QAT model
    outputs, the range of the output layer's quantizer (through weightless
    pass-through layers such as Flatten) / 255. A float head (TTQ and binary
    keep the last Dense float) has no grid: (1/255 of the logits' range, False)."""
    ranges = {k.split("/")[0]: v for k, v in mntk.quantization.quantizer_ranges(q).items()
              if "/weight:" not in k and not k.startswith("quantize(")}
    layer = q.layers[-1]
    while layer.name not in ranges:
        inbound = layer._inbound_nodes[0].inbound_layers if layer._inbound_nodes else []
        if layer.weights or isinstance(layer, keras.layers.InputLayer) or not inbound:
            return float(np.ptp(logits)) / 255.0, False
        layer = inbound[0] if isinstance(inbound, (list, tuple)) else inbound
    lo, hi = ranges[layer.name]
    return (hi - lo) / 255.0, True


def test_save_load_keras_identical(app, int8_qat, tmp_path):
    name, model = app
    path = str(tmp_path / "m.keras")
    copy = prepare.prepare(model)
    copy.save(path)
    x, _ = _inputs(name, 8)
    np.testing.assert_array_equal(_outputs(mntk.load_model(path), x), _outputs(copy, x))
    # (the int8 cell's QAT copy: calibrated ranges, and fitted when that cell ran first)
    qpath = str(tmp_path / "q.keras")
    int8_qat.save(qpath)
    np.testing.assert_array_equal(_outputs(mntk.load_model(qpath), x), _outputs(int8_qat, x))
    assert os.path.getsize(qpath) > 0
