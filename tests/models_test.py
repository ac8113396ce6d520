"""Reference architectures: shapes, names, hand-counted parameters, countable layers."""
import numpy as np
import pytest

import mntk
import mntk.models as mm
from mntk.compat import keras
from _marks import fast_first

COUNTABLE = {"InputLayer", "Conv2D", "DepthwiseConv2D", "Dense", "BatchNormalization",
             "Activation", "GlobalAveragePooling2D", "Add", "Multiply", "Dropout",
             "Flatten", "Reshape", "ZeroPadding2D"}
ACTIVATIONS = {"linear", "relu", "relu6", "swish", "sigmoid", "hard_sigmoid", "hard_swish"}


def _bn(c):
    return 4 * c  # gamma, beta, moving mean, moving variance


def _conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def digits_cnn_params(width, channels, classes):
    """Hand count of digits_cnn (see its docstring for the layout)."""
    w = width
    p = _conv(3, channels, w) + _bn(w)                               # stem
    p += 9 * w + _bn(w) + _conv(1, w, 2 * w) + _bn(2 * w)            # block1
    hidden, squeeze = 6 * w, (6 * w) // 4
    ir = (_conv(1, 2 * w, hidden) + _bn(hidden) + 9 * hidden + _bn(hidden)
          + _conv(1, hidden, squeeze, True) + _conv(1, squeeze, hidden, True)
          + _conv(1, hidden, 2 * w) + _bn(2 * w))
    return p + 2 * ir + 2 * w * classes + classes                    # blocks 2, 3, dense


def three_stage_params(units, widths, classes, channels=3):
    """Hand count of a post-activation CIFAR ResNet / WRN with 1x1 projections."""
    p, cin = _conv(3, channels, 16) + _bn(16), 16
    for w in widths:
        for _ in range(units):
            p += 2 * _bn(w) + _conv(3, cin, w) + _conv(3, w, w)
            if cin != w:
                p += _conv(1, cin, w) + _bn(w)
            cin = w
    return p + cin * classes + classes


def kaist_params(stem, stages, classes, expansion=3, se_ratio=0.25):
    p, cin = _conv(3, 3, stem) + _bn(stem), stem
    for out, repeats, _ in stages:
        for _ in range(repeats):
            h = cin * expansion
            s = int(h * se_ratio)
            p += (_conv(1, cin, h) + _bn(h) + 9 * h + _bn(h) + _conv(1, h, s, True)
                  + _conv(1, s, h, True) + _conv(1, h, out) + _bn(out))
            cin = out
    return p + cin * classes + classes


def assert_countable(model):
    for layer in model.layers:
        kind = type(layer).__name__
        assert kind in COUNTABLE, f"{layer.name} is a {kind}"
        act = getattr(layer, "activation", None)
        if act is not None:
            name = act if isinstance(act, str) else act.__name__
            assert name in ACTIVATIONS, f"{layer.name} uses activation {name}"
            if kind != "Activation":
                assert name == "linear", f"{layer.name} fuses {name}"


@pytest.mark.parametrize("width,channels,classes", [(16, 1, 10), (8, 3, 7)])
def test_digits_cnn_layout_and_params(width, channels, classes):
    model = mm.digits_cnn((16, 16, channels), classes, width)
    assert model.output_shape == (None, classes)
    assert model.count_params() == digits_cnn_params(width, channels, classes)
    kinds = {type(l).__name__ for l in model.layers}
    assert COUNTABLE - {"Flatten", "Reshape", "ZeroPadding2D"} <= kinds  # every kind
    names = [l.name for l in model.layers]
    assert [n for n in names if n.endswith("_out")] == ["block1_out", "block2_out",
                                                        "block3_out"]
    assert type(model.get_layer("block3_out")).__name__ == "Add"   # residual
    assert model.get_layer("logits").activation.__name__ == "linear"
    assert model.get_layer("block2_se_hard_sigmoid").activation.__name__ == "hard_sigmoid"
    assert model.get_layer("block2_out").output_shape == (None, 8, 8, 2 * width)
    assert_countable(model)


def test_digits_cnn_default_signature():
    model = mm.digits_cnn()
    assert model.name == "digits_cnn" and model.input_shape == (None, 16, 16, 1)
    assert model.count_params() == 26650 == digits_cnn_params(16, 1, 10)


@pytest.mark.slow
@pytest.mark.parametrize("depth", [20, 32])
def test_resnet_cifar_params_match_hand_count(depth):
    model = mm.resnet_cifar(depth)
    n = (depth - 2) // 6
    assert model.count_params() == three_stage_params(n, (16, 32, 64), 10)
    assert len([l for l in model.layers if type(l).__name__ == "Add"]) == 3 * n
    assert model.get_layer("block3_out").output_shape == (None, 8, 8, 64)
    assert model.get_layer("stem_conv") is model.layers[1]
    assert_countable(model)


def test_resnet20_is_the_papers_027m():
    assert round(mm.get("resnet20").count_params() / 1e6, 2) == 0.27


def test_small_wide_resnet_matches_hand_count():
    model = mm.wide_resnet(depth=10, width=2, num_classes=5, input_shape=(16, 16, 3))
    assert model.count_params() == three_stage_params(1, (32, 64, 128), 5)
    assert model.output_shape == (None, 5)


@pytest.mark.slow
def test_wrn_28_10_is_the_micronet_baseline_size():
    model = mm.get("wrn28_10")
    assert model.count_params() == three_stage_params(4, (160, 320, 640), 100)
    # BN folded into a bias per channel: conv/dense weights + 1 bias per BN
    # channel = the 36.5M parameters of the MicroNet CIFAR-100 baseline.
    folded = sum(int(np.prod(w.shape)) for l in model.layers for w in l.weights
                 if type(l).__name__ != "BatchNormalization")
    folded += sum(l.weights[0].shape[0] for l in model.layers
                  if type(l).__name__ == "BatchNormalization")
    assert round(folded / 1e6, 1) == 36.5


def test_kaist_mobilenet_small_config_matches_hand_count():
    stages = ((8, 2, 1), (16, 1, 2))
    model = mm.kaist_mobilenet((16, 16, 3), 10, stem_filters=8, stages=stages)
    assert model.count_params() == kaist_params(8, stages, 10)
    assert type(model.get_layer("block1_out")).__name__ == "Add"
    assert model.get_layer("block2_out").output_shape == (None, 8, 8, 16)
    assert model.get_layer("block1a_dw_hard_swish").activation.__name__ == "hard_swish"
    assert model.get_layer("dropout").rate == 0.3
    assert_countable(model)


def test_hard_swish_matches_numpy_and_round_trips(tmp_path):
    x = np.linspace(-5, 5, 41).astype(np.float32)
    np.testing.assert_allclose(mm.hard_swish(x).numpy(),
                               x * np.clip(x + 3, 0, 6) / 6, atol=1e-6)
    model = mm.kaist_mobilenet((16, 16, 3), 5, stem_filters=8, stages=((8, 1, 2),))
    data = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded(data).numpy(), model(data).numpy(), atol=1e-6)


@pytest.mark.slow
def test_efficientnet_cifar_exit_point_and_layers():
    model = mm.efficientnet_cifar(num_classes=10, width_multiplier=0.25,
                                  depth_multiplier=0.5, head_filters=128)
    assert model.get_layer("block4_out").output_shape[1:3] == (8, 8)
    assert model.output_shape == (None, 10)
    gate = model.get_layer("block2a_se_sigmoid")
    assert gate.activation.__name__ == "sigmoid"
    assert_countable(model)


SLOW = pytest.mark.slow
DEFAULT_BUILDS = [
    ("digits_cnn", (16, 16, 1), 10), ("resnet20", (32, 32, 3), 10),
    ("resnet32", (32, 32, 3), 10),
    pytest.param("resnet56", (32, 32, 3), 10, marks=SLOW),
    pytest.param("kaist_mobilenet", (32, 32, 3), 100, marks=SLOW),
    pytest.param("mobilenet_v2_cifar", (32, 32, 3), 100, marks=SLOW),
    pytest.param("efficientnet_cifar", (32, 32, 3), 100, marks=SLOW),
    pytest.param("efficientnet_b0", (224, 224, 3), 1000, marks=SLOW),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,input_shape,classes", DEFAULT_BUILDS)
def test_registry_builds_at_default_size(name, input_shape, classes):
    model = mm.get(name)
    assert model.input_shape == (None,) + input_shape
    assert model.output_shape == (None, classes)
    assert "block1_out" in [l.name for l in model.layers]
    assert_countable(model)


@pytest.mark.slow
def test_efficientnet_b0_matches_keras_application_count():
    ours = mm.efficientnet_b0()
    ref = keras.applications.EfficientNetB0(weights=None)
    normalization = sum(l.count_params() for l in ref.layers
                        if type(l).__name__ == "Normalization")
    assert ours.count_params() == ref.count_params() - normalization


@pytest.mark.parametrize("model", fast_first([
    lambda: mm.digits_cnn(),
    lambda: mm.resnet_cifar(20),
    lambda: mm.kaist_mobilenet((16, 16, 3), 10, stem_filters=8, stages=((8, 2, 1), (16, 1, 2))),
    lambda: mm.mobilenet_v2_cifar(num_classes=10, width_multiplier=0.25, head_filters=64),
    lambda: mm.efficientnet_cifar(num_classes=10, width_multiplier=0.25, depth_multiplier=0.5,
                                  head_filters=64),
]))
def test_cost_counter_counts_every_layer(model):
    m = model()
    report = mntk.cost.estimate(m)
    assert report.params > 0 and report.ops > 0
    counted = {row.layer for row in report.layers}
    # BN folds into the preceding conv, so it need not have a row of its own
    weighted = {l.name for l in m.layers if l.count_params()
                and type(l).__name__ != "BatchNormalization"}
    assert weighted <= counted


def test_registry_errors():
    with pytest.raises(ValueError, match="kaist_mobilenet.*efficientnet_b0"):
        mm.get("resnet18")
    with pytest.raises(TypeError, match="resnet20"):
        mm.get("resnet20", widht=3)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        mm.resnet_cifar(21)
    with pytest.raises(ValueError, match="at least 16x16"):
        mm.kaist_mobilenet((8, 8, 3))
    with pytest.raises(ValueError, match="image_size"):
        mm.digits_cnn((2, 2, 1))


@pytest.mark.slow
def test_digits_cnn_trains_to_95_percent():
    data = mntk.data.digits(image_size=16)
    model = mm.digits_cnn()
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    # 6 epochs: test accuracy 0.981-0.986 at seeds 0-2 (0.953-0.964 after 3)
    model.fit(data.x_train, data.y_train, batch_size=32, epochs=6, verbose=0)
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy >= 0.95
