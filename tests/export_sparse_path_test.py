"""XNNPACK's sparse-kernel conditions (mntk.export.sparse_path) on Keras models.

The rules are XNNPACK's (src/subgraph.c ``xnn_check_nchw_compatibility`` and
``xnn_subgraph_rewrite_for_nchw``; src/xnnpack/hardware-config.h
``xnn_is_chw_compatible_config``); each test builds a model that meets them
and breaks exactly one, and checks the named layer.
"""
import numpy as np
import pytest
from _marks import fast_first

from mntk.compat import keras
from mntk.export import sparse_path

layers = keras.layers


def _chain(stem=None, first_padding="pad1", dw2_padding="pad1", rescale=False,
           tail_pool="gap", zero_fraction=0.75, dw_kernel=3):
    """A MobileNet-like float model built to meet XNNPACK's NCHW chain, with one
    knob per rule to break it."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1, name="scale")(inputs) if rescale else inputs
    if first_padding == "pad1":
        x = layers.ZeroPadding2D(1, name="stem_pad")(x)
        x = layers.Conv2D(8, 3, strides=2, padding="valid", name="stem")(x)
    else:  # TensorFlow SAME at stride 2 (keras.applications' Conv1)
        x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(x)
    x = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    x = layers.DepthwiseConv2D(dw_kernel, padding="same", name="dw1")(x)
    x = layers.ReLU(6.0)(x)
    x = layers.Conv2D(16, 1, name="pw1")(x)
    skip = x
    x = layers.Conv2D(16, 1, name="pw2")(x)
    x = layers.Add(name="add")([x, skip])
    if dw2_padding == "pad1":
        x = layers.ZeroPadding2D(1, name="dw2_pad")(x)
        x = layers.DepthwiseConv2D(3, strides=2, padding="valid", name="dw2")(x)
    elif dw2_padding == "pad01":  # keras.applications' correct_pad at even sizes
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="dw2_pad")(x)
        x = layers.DepthwiseConv2D(3, strides=2, padding="valid", name="dw2")(x)
    else:
        x = layers.DepthwiseConv2D(3, strides=2, padding="same", name="dw2")(x)
    x = layers.Conv2D(32, 1, activation="relu", name="pw3")(x)
    if tail_pool == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, layers.Dense(10, name="logits")(x))
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer) is layers.Conv2D and layer.kernel_size == (1, 1):
            weights = layer.get_weights()
            weights[0] = np.where(rng.random(weights[0].shape) < zero_fraction, 0.0,
                                  weights[0]).astype("float32")
            layer.set_weights(weights)
    return model


def test_model_built_to_the_rules_passes():
    assert sparse_path.sparse_path_blocker(_chain()) == ""


@pytest.mark.parametrize("case", fast_first([
    ({"first_padding": "same"}, "stem", "TensorFlow SAME at stride 2"),
    ({"dw2_padding": "pad01"}, "dw2", "((0, 1), (0, 1))"),
    ({"dw2_padding": "same"}, "dw2", "TensorFlow SAME at stride 2"),
    ({"rescale": True}, "scale", "before the first Conv2D"),
    ({"dw_kernel": 7}, "dw1", "3x3 or 5x5"),
], ids=["stem_same_stride2", "dw_pad01", "dw_same_stride2", "rescaling_in_front",
        "dw_7x7"]))
def test_blocker_names_the_layer(case):
    kwargs, layer, words = case
    note = sparse_path.sparse_path_blocker(_chain(**kwargs))
    assert f"'{layer}'" in note and words in note


def test_pruning_wrappers_and_nested_models_are_seen_through():
    import tensorflow_model_optimization as tfmot
    prune = tfmot.sparsity.keras.prune_low_magnitude
    assert sparse_path.sparse_path_blocker(prune(_chain())) == ""
    note = sparse_path.sparse_path_blocker(prune(_chain(first_padding="same")))
    assert "'stem'" in note
    inner = _chain()
    outer = keras.Sequential([keras.Input((32, 32, 3)), inner])
    assert sparse_path.sparse_path_blocker(outer) == ""


def test_chain_must_end_at_a_global_average_pool():
    note = sparse_path.sparse_path_blocker(_chain(tail_pool="flatten"))
    assert "'flatten'" in note or "GlobalAveragePooling2D" in note


def test_too_few_zeros_for_the_sparse_rewrite():
    # XNNPACK skips the rewrite unless zeros > params / 3 * 2 in the 1x1 convs.
    assert sparse_path.sparse_path_blocker(_chain(zero_fraction=0.75)) == ""
    note = sparse_path.sparse_path_blocker(_chain(zero_fraction=0.3))
    assert "zeros" in note and "67%" in note


def test_quantized_files_never_take_the_sparse_path():
    assert "float32" in sparse_path.sparse_path_blocker(_chain(), quantize="int8")


def test_keras_mobilenet_v2_breaks_at_its_first_conv():
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(96, 96, 3),
                                           classes=10, weights=None)
    note = sparse_path.sparse_path_blocker(model)
    assert "'Conv1'" in note and "SAME at stride 2" in note


def test_cpu_rule_follows_avx(monkeypatch, tmp_path):
    flags = (tmp_path / "flags")
    monkeypatch.setattr(sparse_path.platform, "machine", lambda: "x86_64")
    real_open = open

    def fake_open(path, *args, **kwargs):
        return real_open(flags, *args, **kwargs) if path == "/proc/cpuinfo" else \
            real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    flags.write_text("flags\t\t: fpu sse sse2 avx avx2 fma\n")
    assert sparse_path.cpu_takes_sparse_path()[0] is False
    flags.write_text("flags\t\t: fpu sse sse2 ssse3 sse4_1\n")
    assert sparse_path.cpu_takes_sparse_path()[0] is True
    monkeypatch.setattr(sparse_path.platform, "machine", lambda: "aarch64")
    assert sparse_path.cpu_takes_sparse_path()[0] is True
    fast, note = sparse_path.sparse_kernels(_chain())
    assert fast and "sparse kernels here" in note
