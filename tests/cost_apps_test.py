"""mntk.cost on keras.applications backbones (issue 14), at 32x32 input.

Every layer type of these models has a rule: TF-op arithmetic (MobileNetV3's
hard-swish / hard-sigmoid), Multiply, Reshape, Activation variants,
ZeroPadding2D, Concatenate, Average/MaxPooling2D, Dropout, Flatten,
Rescaling / Normalization. The kernels' multiplies are checked against a hand
count from the layer configs and output shapes:
  Conv2D k_h*k_w*cin/groups*N, DepthwiseConv2D k_h*k_w*N, Dense cin*N.
"""
import math

import pytest

from mntk.compat import keras
import mntk

A = keras.applications
pytestmark = pytest.mark.slow

MODELS = {
    "mobilenet_v2_0.35": lambda: A.MobileNetV2(alpha=0.35, weights=None,
                                               input_shape=(32, 32, 3)),
    "mobilenet_v3_small": lambda: A.MobileNetV3Small(weights=None, input_shape=(32, 32, 3)),
    "mobilenet_v3_small_minimalistic": lambda: A.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), minimalistic=True),
    "efficientnet_b0": lambda: A.EfficientNetB0(weights=None, input_shape=(32, 32, 3)),
    "resnet50_v2": lambda: A.ResNet50V2(weights=None, input_shape=(32, 32, 3)),
    "densenet121": lambda: A.DenseNet121(weights=None, input_shape=(32, 32, 3)),
}


def hand_kernel_mults(model):
    total = 0
    for layer in model.layers:
        cls, cfg = type(layer).__name__, layer.get_config()
        n = math.prod(layer.output_shape[1:])
        if cls == "Conv2D":
            kh, kw = cfg["kernel_size"]
            total += kh * kw * layer.input_shape[-1] // cfg["groups"] * n
        elif cls == "DepthwiseConv2D":
            kh, kw = cfg["kernel_size"]
            total += kh * kw * n
        elif cls == "Dense":
            total += layer.input_shape[-1] * n
    return total


def tf_op_elements(model):
    """Elements out of each TF-op layer (each is one add or one mult)."""
    return sum(math.prod(layer.output_shape[1:]) for layer in model.layers
               if type(layer).__name__ == "TFOpLambda")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_estimate_runs_and_kernel_mults_match_a_hand_count(name):
    model = MODELS[name]()
    report = mntk.cost.estimate(model, task="imagenet")
    kernel_rows = [r for r in report.layers if r.channels]
    assert sum(r.mults for r in kernel_rows) == hand_kernel_mults(model)
    assert report.params > 0 and report.score > 0
    tf_rows = [r for r in report.layers if r.kind.startswith("tf:")]
    assert sum(r.mults + r.adds for r in tf_rows) == tf_op_elements(model)
    if name == "mobilenet_v3_small":
        # hard_sigmoid = relu6(x + 3) * (1/6): one TF add and one TF mult per
        # element, so 28 + 28 TF-op layers (DESIGN: hard-sigmoid 3+1 with relu6).
        assert sorted({r.kind for r in tf_rows}) == ["tf:__operators__.add",
                                                     "tf:math.multiply"]
        assert len(tf_rows) == 56
