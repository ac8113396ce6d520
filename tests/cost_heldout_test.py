"""Held-out networks counted by mntk.cost against the official formulas.

The reference below is written from the MicroNet scoring rules in
../shared/DESIGN.md with plain numpy, walking each Keras layer's config and
output shape; it never calls mntk.cost. Per op (k = kernel, s = sparsity of
the layer, N = output elements):
  Conv2D     mults k*k*cin/groups*(1-s)*N, adds (k*k*cin/groups*(1-s) - 1)*N
             (+N with a bias; a BatchNorm right after the conv is its bias)
  Depthwise  the same with vector length k*k
  Dense      mults cin*(1-s)*cout, adds (cin*(1-s) - 1)*cout (+cout bias)
  GAP        C mults, (H*W - 1)*C adds; Add 1 add and Multiply 1 mult per
             element; Rescaling 1 mult, Normalization 1 mult + 1 add per
             element (elementwise scale / shift)
  activations per element: relu (1,0), relu6 (2,0), swish (3,1), sigmoid (2,1)
  storage    a dense layer (s = 0, as its author declares it) stores every
             value at its bits; a sparse one its nonzeros + a 1-bit mask;
             biases dense; Rescaling stores its scale, Normalization its mean
             and 1/std per channel
  bits       32, or the 16-bit freebie: params and mults at 16, adds at 32.
The classifiers are built with classifier_activation=None (logits), so the
final softmax question does not arise.

Models at 224 take ~15 s each to build here: one build per module, weights
redrawn per seed (seed 1 draws with numpy and plants exact zeros, the case
that used to trigger the sparse mask on a dense model).
"""
import math

import numpy as np
import pytest

from mntk.compat import keras
import mntk

L = keras.layers
pytestmark = pytest.mark.slow

ACTS = {"linear": (0, 0), "relu": (1, 0), "relu6": (2, 0), "swish": (3, 1),
        "sigmoid": (2, 1)}


def _act(name):
    return ACTS[{"silu": "swish"}.get(name, name)]


def _bn_inputs(model):
    """Names of the layers whose output feeds a BatchNormalization."""
    names = set()
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            names.add(layer._inbound_nodes[0].inbound_layers.name)
    return names


def official_count(model, freebie=False, sparse=False):
    """(param_bits, mults, adds, ops) by the official formulas (see above).

    `sparse`: the author declares the kernels sparse (s = their fraction of
    zeros, storage with the mask); else dense (s = 0), whatever zeros the
    values happen to hold.

    Returns also the per-layer adds each empty output channel would have
    saved under per-channel counting (see the sparse test).
    """
    pbits = mbits = 16.0 if freebie else 32.0
    folded = _bn_inputs(model)
    param_bits = mults = adds = 0.0
    empty_channel_adds = 0
    for layer in model.layers:
        cls = type(layer).__name__
        cfg = layer.get_config()
        out = tuple(layer.output_shape[1:])
        n = math.prod(out)
        if cls in ("Conv2D", "DepthwiseConv2D", "Dense"):
            kernel = layer.get_weights()[0]
            if cls == "Conv2D":
                kh, kw = cfg["kernel_size"]
                channels = cfg["filters"]
                vec = kh * kw * kernel.shape[2]            # cin / groups
            elif cls == "DepthwiseConv2D":
                kh, kw = cfg["kernel_size"]
                channels = kernel.shape[2] * kernel.shape[3]
                vec = kh * kw
            else:
                channels, vec = cfg["units"], kernel.shape[0]
            assert kernel.size == vec * channels
            zeros = int((kernel == 0).sum())
            s = zeros / kernel.size if sparse else 0.0
            spatial = n // channels
            mults += vec * (1 - s) * n
            adds += (vec * (1 - s) - 1) * n
            if sparse:
                param_bits += (kernel.size - zeros) * pbits + kernel.size
            else:
                param_bits += kernel.size * pbits
            if sparse:
                per_channel = (kernel.reshape(-1, channels) != 0).sum(axis=0)
                empty_channel_adds += int((per_channel == 0).sum()) * spatial
            if cfg.get("use_bias") or layer.name in folded:
                adds += n
                param_bits += channels * pbits
            m, a = _act(cfg.get("activation", "linear"))
            mults, adds = mults + m * n, adds + a * n
        elif cls == "ReLU":
            mults += (2 if cfg["max_value"] is not None else 1) * n
        elif cls == "Activation":
            m, a = _act(cfg["activation"])
            mults, adds = mults + m * n, adds + a * n
        elif cls == "GlobalAveragePooling2D":
            h, w, c = layer.input_shape[1:]
            mults += c
            adds += (h * w - 1) * c
        elif cls == "Add":
            adds += (len(layer.input_shape) - 1) * n
        elif cls == "Multiply":
            mults += (len(layer.input_shape) - 1) * n
        elif cls == "Rescaling":
            mults += n
            param_bits += pbits
        elif cls == "Normalization":
            mults, adds = mults + n, adds + n
            param_bits += 2 * out[-1] * pbits
        elif cls in ("BatchNormalization", "InputLayer", "ZeroPadding2D", "Reshape",
                     "Dropout"):
            assert cls != "BatchNormalization" or layer._inbound_nodes[0].inbound_layers.name in folded
        else:
            raise AssertionError(f"reference has no formula for {cls}")
    ops = mults * mbits / 32 + adds
    return param_bits, mults, adds, ops, empty_channel_adds


def kernels(model):
    """The conv / depthwise / dense kernel variables of `model`."""
    return [getattr(layer, attr) for layer in model.layers
            for attr in ("kernel", "depthwise_kernel") if hasattr(layer, attr)]


def redraw(model, seed):
    """Seed 0: the Keras init as built. Else fresh normal kernels with exact
    zeros planted in each (3 per kernel), far below any sparse break-even."""
    if not hasattr(model, "_mntk_init"):
        model._mntk_init = [k.numpy() for k in kernels(model)]
    rng = np.random.default_rng(seed)
    for variable, init in zip(kernels(model), model._mntk_init):
        value = init
        if seed:
            value = rng.normal(0, 0.05, size=init.shape).astype(init.dtype)
            value.reshape(-1)[rng.choice(value.size, 3, replace=False)] = 0.0
        variable.assign(value)


def wrn_28_10(classes=100):
    """Post-activation WRN-28-10 (see the hand count below)."""
    def conv_bn(x, filters, kernel, stride):
        x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        return L.BatchNormalization()(x)

    inputs = keras.Input((32, 32, 3))
    x = L.ReLU()(conv_bn(inputs, 16, 3, 1))
    channels = 16
    for group, width in enumerate((160, 320, 640)):
        for block in range(4):
            stride = 2 if group > 0 and block == 0 else 1
            y = L.ReLU()(conv_bn(x, width, 3, stride))
            y = conv_bn(y, width, 3, 1)
            shortcut = conv_bn(x, width, 1, stride) if channels != width else x
            x = L.ReLU()(L.Add()([y, shortcut]))
            channels = width
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, L.Dense(classes)(x), name="wrn_28_10")


def wrn_hand_count():
    """WRN-28-10 by hand: n = 4 blocks per group, widths 160/320/640,
    conv3x3-BN-ReLU-conv3x3-BN (+ 1x1 conv-BN shortcut where the shape
    changes) -> ReLU, BN folded to a bias, GAP, Dense(100)."""
    params = 27 * 16 + 16
    mults = adds = 0
    size, cin = 32, 16
    mults += 27 * 16 * size * size + 16 * size * size       # stem conv + ReLU
    adds += 27 * 16 * size * size
    for group, width in enumerate((160, 320, 640)):
        for block in range(4):
            if group > 0 and block == 0:
                size //= 2
            n = size * size * width
            params += 9 * cin * width + width + 9 * width * width + width
            mults += 9 * cin * n + n + 9 * width * n + n     # 2 convs, 2 ReLUs
            adds += 9 * cin * n + 9 * width * n + n          # 2 convs, residual add
            if cin != width:
                params += cin * width + width
                mults += cin * n
                adds += cin * n
            cin = width
    mults += 640 + 640 * 100
    adds += 63 * 640 + 640 * 100
    params += 640 * 100 + 100
    return params, mults, adds


MODELS = {
    "wrn_28_10": wrn_28_10,
    "mobilenet_v2_1.4": lambda: keras.applications.MobileNetV2(
        alpha=1.4, weights=None, classifier_activation=None),
    "efficientnet_b0": lambda: keras.applications.EfficientNetB0(
        weights=None, classifier_activation=None),
}


@pytest.fixture(scope="module")
def built():
    return {}


def get(built, name):
    if name not in built:
        keras.utils.set_random_seed(0)
        built[name] = MODELS[name]()
    return built[name]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_dense_counts_are_the_official_formulas_at_any_init(built, name, seed):
    model = get(built, name)
    redraw(model, seed)
    if seed:
        assert all((k.numpy() == 0).sum() == 3 for k in kernels(model))
    param_bits, mults, adds, ops, _ = official_count(model)
    report = mntk.cost.estimate(model)
    assert report.param_bits == pytest.approx(param_bits, rel=1e-6)
    assert report.raw_mults == pytest.approx(mults, rel=1e-6)
    assert report.raw_adds == pytest.approx(adds, rel=1e-6)
    assert report.ops == pytest.approx(ops, rel=1e-6)
    assert {r.encoding for r in report.layers if r.channels} == {"dense"}


def test_wrn_28_10_is_the_published_cifar100_baseline(built):
    """36.5M params and 10.49B ops at 32 bits: the baseline itself (DESIGN)."""
    model = get(built, "wrn_28_10")
    redraw(model, 0)
    params, mults, adds = wrn_hand_count()
    assert (params, mults, adds) == (36_529_028, 5_245_697_152, 5_244_573_568)
    report = mntk.cost.estimate(model, task="cifar100")
    assert (report.params, report.raw_mults, report.raw_adds) == (params, mults, adds)
    assert report.params == pytest.approx(36.5e6, rel=1e-3)
    assert report.ops == pytest.approx(10.49e9, rel=1e-3)
    assert report.score == pytest.approx(2.0, abs=2e-3)
    # Every BN is folded: 25 convs + 3 shortcuts, all "conv+bn".
    assert sum(r.kind == "conv+bn" for r in report.layers) == 28
    assert not any(r.kind == "bn" for r in report.layers)


def test_sparse_efficientnet_b0_with_the_freebie(built):
    """50% of every >= 2-D weight zeroed, counted with the 16-bit freebie.

    The official formulas take one sparsity per layer: adds (vec*(1-s) - 1)*N
    summed over channels, which is sum_c (nnz_c - 1) * S. mntk counts per
    output channel and never lets a channel with no nonzero weight go
    negative (max(nnz_c - 1, 0)): each empty channel (a depthwise 3x3 channel
    loses all 9 weights with probability 2^-9) is S adds more than the
    official formula. That is the whole difference, checked exactly.
    """
    model = get(built, "efficientnet_b0")
    redraw(model, 0)
    rng = np.random.default_rng(7)
    for variable, init in zip(kernels(model), model._mntk_init):
        variable.assign(init * (rng.random(init.shape) >= 0.5))
    param_bits, mults, adds, ops, empty_adds = official_count(model, freebie=True, sparse=True)
    report = mntk.cost.estimate(model, freebie=True)
    assert report.param_bits == pytest.approx(param_bits, rel=1e-9)
    assert report.raw_mults == pytest.approx(mults, rel=1e-9)
    assert report.raw_adds == pytest.approx(adds + empty_adds, rel=1e-9)
    assert report.ops == pytest.approx(ops, rel=1e-4)
    assert report.params == pytest.approx(param_bits / 32, rel=1e-4)
    assert {r.encoding for r in report.layers if r.channels} == {"sparse"}
    redraw(model, 0)
