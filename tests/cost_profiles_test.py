"""Counting profiles (issue 13): each convention against a hand count."""
import json

import pytest

from mntk.compat import keras
import mntk

L = keras.layers


def se_model():
    """conv3x3(no bias)+BN -> relu -> x * SE(x) -> + x -> GAP -> Dense, 4x4x3 in.

    Hand count (official, 32 bits), N = 4*4*4 = 64:
      conv   108 weights + 4 folded biases; 27*64 mults, 26*64 + 64 adds
      relu   64 mults
      GAP    4 mults, 15*4 adds (twice: the SE squeeze and the head)
      SE conv 16 weights + 4 biases; 16 mults, 12 + 4 adds; sigmoid 2*4, 1*4
      SE scale (broadcast Multiply) 64 mults; residual Add 64 adds
      Dense  8 weights + 2 biases; 8 mults, 6 + 2 adds
    """
    inputs = keras.Input((4, 4, 3))
    x = L.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    gate = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = L.Conv2D(4, 1, activation="sigmoid", name="se")(gate)
    y = L.Add(name="residual")([x, L.Multiply(name="scale")([x, gate])])
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(inputs, L.Dense(2, name="fc")(y))


PARAMS = 108 + 4 + 16 + 4 + 8 + 2                                  # 142
KERNEL_VALUES = 108 + 16 + 8                                       # 132
MULTS = 27 * 64 + 64 + 4 + 16 + 8 + 64 + 4 + 8                     # 1896
ADDS = 26 * 64 + 64 + 60 + 16 + 4 + 64 + 60 + 8                    # 1940


def test_official_is_the_default():
    report = mntk.cost.estimate(se_model())
    assert (report.params, report.raw_mults, report.raw_adds) == (PARAMS, MULTS, ADDS)
    assert report.ops == MULTS + ADDS
    assert report.to_json()["conventions"]["name"] == "official"
    same = mntk.cost.estimate(se_model(), conventions="official")
    assert (same.params, same.ops) == (report.params, report.ops)


def test_kaist_conventions():
    report = mntk.cost.estimate(se_model(), conventions="kaist")
    # 16-bit params (nonzeros + biases) + a 1-bit mask over every kernel,
    # dense or not: 142 / 2 + 132 / 32.
    assert report.params == PARAMS / 2 + KERNEL_VALUES / 32
    # The SE scale (64 mults) and the residual add (64 adds) are not counted;
    # mults at 16 bits, adds at 32.
    assert (report.raw_mults, report.raw_adds) == (MULTS - 64, ADDS - 64)
    assert report.ops == (MULTS - 64) / 2 + (ADDS - 64)
    assert {r.encoding for r in report.layers if r.channels} == {"sparse"}
    assert not [r for r in report.layers if r.layer in ("scale", "residual")]
    assert "'kaist' conventions" in report.table()


def hard_swish(x):
    """x * relu6(x + 3) / 6 (MobileNetV3); named so the counter knows it."""
    return x * keras.activations.relu(x + 3.0, max_value=6.0) / 6.0


def test_kaist_activation_costs_hard_swish_and_sigmoid():
    inputs = keras.Input((3,))
    x = L.Activation(hard_swish, name="a")(inputs)
    x = L.Activation("sigmoid", name="s")(x)
    model = keras.Model(inputs, L.Dense(1, name="fc")(x))
    report = mntk.cost.estimate(model, conventions="kaist")
    act = {r.layer: (r.mults, r.adds) for r in report.layers if r.kind.startswith("act:")}
    assert act == {"a": (4 * 3, 1 * 3), "s": (2 * 3, 1 * 3)}


def test_osi_is_official_with_the_freebie():
    report = mntk.cost.estimate(se_model(), conventions="osi")
    assert report.params == PARAMS / 2
    assert report.ops == MULTS / 2 + ADDS
    assert report.freebie


def test_custom_profile_and_overrides():
    relu_free = mntk.cost.CountingProfile("relu_free", activation_costs={"relu": (0, 0)},
                                          accumulator_bits=16)
    report = mntk.cost.estimate(se_model(), conventions=relu_free)
    assert report.raw_mults == MULTS - 64
    assert report.ops == MULTS - 64 + ADDS * 16 / 32
    # Arguments given to estimate override the profile's.
    report = mntk.cost.estimate(se_model(), conventions="kaist", freebie=False)
    assert report.params == PARAMS + KERNEL_VALUES / 32
    mntk.cost.register_profile(relu_free)
    try:
        assert mntk.cost.estimate(se_model(), conventions="relu_free").raw_mults == MULTS - 64
    finally:
        del mntk.cost.PROFILES["relu_free"]
    json.dumps(mntk.cost.estimate(se_model(), conventions="kaist").to_json())


def test_profile_errors():
    with pytest.raises(ValueError, match="'nope'.*kaist.*official.*osi"):
        mntk.cost.estimate(se_model(), conventions="nope")
    with pytest.raises(ValueError, match="storage='dense'"):
        mntk.cost.CountingProfile("x", storage="dense")
    with pytest.raises(ValueError, match=r"activation_costs\['relu'\]"):
        mntk.cost.CountingProfile("x", activation_costs={"relu": (1,)})
