"""add_exits: shapes, weight sharing, exit placement, heads, errors, cost."""
import os

import numpy as np
import pytest
import tensorflow as tf

import mntk
from mntk.compat import keras
from mntk.early_exit import MixedPooling2D, add_exits, exit_fractions


def conv_backbone(num_classes=10):
    """8x8x1 -> stem -> block1_out -> residual block2 -> GAP -> logits."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="block1_out")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="block2_conv")(x)
    y = keras.layers.ReLU(name="block2_relu")(y)
    x = keras.layers.Add(name="block2_out")([x, y])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, name="logits")(x),
                       name="backbone")


def dense_chain():
    """8 -> d1(16) -> d2(16) -> d3(16) -> logits(4), all linear with bias.

    Dense(cin -> cout) with bias: cin*cout mults + ((cin-1)*cout + cout) adds
    = 2*cin*cout ops: d1 256, d2 512, d3 512, logits 128; total 1408.
    """
    inputs = keras.Input((8,), name="features")
    x = keras.layers.Dense(16, name="d1")(inputs)
    x = keras.layers.Dense(16, name="d2")(x)
    x = keras.layers.Dense(16, name="d3")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="logits")(x), name="chain")


@pytest.mark.slow
@pytest.mark.parametrize("head", ["osi", "sdn", "linear"])
def test_outputs_shapes_and_shared_backbone(head):
    model = conv_backbone()
    multi = add_exits(model, at=["block2_out", "block1_out"], head=head)
    assert multi.output_names == ["exit_0", "exit_1", "logits"]
    x = np.random.RandomState(0).rand(5, 8, 8, 1).astype("float32")
    outs = multi.predict(x, verbose=0)
    assert [o.shape for o in outs] == [(5, 10)] * 3
    # A copy of the backbone with the same weights: the final output is the
    # original model's, and the model given stays untouched.
    for layer in model.layers:
        copy = multi.get_layer(layer.name)
        assert copy is not layer
        for a, b in zip(copy.get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(outs[-1], model.predict(x, verbose=0), rtol=1e-6)
    assert not any(l.name.startswith("exit_") for l in model.layers)
    # The shallower exit (block1_out) comes first: its head reads 8 channels
    # at the block1 position, i.e. exit_0 depends on fewer backbone layers.
    multi.get_layer("block2_conv").kernel.assign(
        multi.get_layer("block2_conv").kernel * 2.0)
    changed = multi.predict(x, verbose=0)
    np.testing.assert_allclose(changed[0], outs[0], rtol=1e-6)
    assert not np.allclose(changed[1], outs[1])


def test_num_classes_and_name():
    multi = add_exits(conv_backbone(), at="block1_out", head="linear",
                      num_classes=3, name="with_exit")
    assert multi.name == "with_exit"
    assert tuple(multi.outputs[0].shape) == (None, 3)


def test_callable_head():
    def head(x, num_classes, name):
        x = keras.layers.Flatten(name=f"{name}_flat")(x)
        return keras.layers.Dense(num_classes, name=name)(x)
    multi = add_exits(conv_backbone(), at=["block1_out"], head=head)
    flat = multi.get_layer("exit_0_flat")
    assert isinstance(flat, keras.layers.Flatten)
    assert flat.input is multi.get_layer("block1_out").output

    def badly_named(x, num_classes, name):
        return keras.layers.Dense(num_classes, name="other")(
            keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match="named 'exit_0'"):
        add_exits(conv_backbone(), at=["block1_out"], head=badly_named)


def test_exit_fractions_match_hand_count():
    fractions = dict((node.layer.name, f) for node, f in exit_fractions(dense_chain()))
    np.testing.assert_allclose(
        [fractions["d1"], fractions["d2"], fractions["d3"]],
        [256 / 1408, 768 / 1408, 1280 / 1408])


@pytest.mark.parametrize("at,expected", [([0.5], ["d2"]), ([0.9, 0.2], ["d1", "d3"])])
def test_exits_by_fraction(at, expected):
    model = dense_chain()
    multi = add_exits(model, at=at, head="linear")
    readers = [multi.get_layer(f"exit_{i}") for i in range(len(expected))]
    got = [mntk.early_exit.graph.producer_node(r.input).layer.name for r in readers]
    assert got == expected


def test_close_fractions_get_distinct_exits_or_a_clear_error():
    # d1 at 0.18, d2 at 0.55, d3 at 0.91: 0.5 and 0.52 are both nearest d2,
    # so the deeper one moves on to d3; four exits cannot fit three places.
    multi = add_exits(dense_chain(), at=[0.5, 0.52], head="linear")
    got = [mntk.early_exit.graph.producer_node(multi.get_layer(f"exit_{i}").input).layer.name
           for i in range(2)]
    assert got == ["d2", "d3"]
    multi = add_exits(dense_chain(), at=[0.01, 0.02], head="linear")  # not both at d1
    got = [mntk.early_exit.graph.producer_node(multi.get_layer(f"exit_{i}").input).layer.name
           for i in range(2)]
    assert got == ["d1", "d2"]
    with pytest.raises(ValueError, match="too few for distinct exits"):
        add_exits(dense_chain(), at=[0.2, 0.4, 0.6, 0.8], head="linear")


def test_mean_ops_matches_hand_count():
    # Linear head on d1: Dense(16 -> 4) = 2*16*4 = 128 ops. exit_ops:
    # exit_0 = d1 + head = 256 + 128 = 384; final = 1408 + 128 = 1536.
    # rates (0.25, 0.75): 0.25*384 + 0.75*1536 = 1248.
    multi = add_exits(dense_chain(), at=["d1"], head="linear")
    report = mntk.cost.estimate(multi)
    np.testing.assert_allclose(report.exit_ops, [384.0, 1536.0])
    mean = mntk.cost.estimate(multi, exit_rates=[0.25, 0.75]).ops
    np.testing.assert_allclose(mean, 1248.0)


def test_mixed_pooling_numpy_reference_and_cost():
    layer = MixedPooling2D()
    x = np.random.RandomState(1).randn(2, 3, 4, 5).astype("float32")
    layer.build(x.shape)
    layer.alpha.assign(0.7)
    a = 1 / (1 + np.exp(-0.7))
    expected = a * x.max(axis=(1, 2)) + (1 - a) * x.mean(axis=(1, 2))
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5)
    clone = MixedPooling2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    # (3*4 - 1)*5 + 3*5 + 2 = 72 mults; (3*4 - 1)*5 + 5 + 2 = 62 adds.
    inputs = keras.Input((3, 4, 5))
    model = keras.Model(inputs, MixedPooling2D(name="mix")(inputs))
    row = [r for r in mntk.cost.estimate(model).layers if r.layer == "mix"][0]
    assert (row.mults, row.adds, row.param_bits) == (72, 62, 32)


@pytest.mark.parametrize("head", ["osi", "sdn"])
def test_save_load_same_outputs(tmp_path, head):
    multi = add_exits(conv_backbone(), at=["block1_out"], head=head)
    x = np.random.RandomState(2).rand(3, 8, 8, 1).astype("float32")
    path = os.path.join(tmp_path, "multi.keras")
    multi.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(multi.predict(x, verbose=0), loaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_unknown_name_lists_nearest():
    with pytest.raises(ValueError, match=r"'block1_ot'.*Nearest names: \['block1_out'"):
        add_exits(conv_backbone(), at=["block1_ot"])


def test_exit_at_final_layer_or_off_path():
    model = conv_backbone()
    with pytest.raises(ValueError, match="at or after the final layer 'logits'"):
        add_exits(model, at=["logits"])
    with pytest.raises(ValueError, match="input layer"):
        add_exits(model, at=["image"])
    with pytest.raises(ValueError, match="both resolve to layer 'block1_out'"):
        add_exits(model, at=["block1_out", "block1_out"])
    with pytest.raises(ValueError, match="fraction in"):
        add_exits(dense_chain(), at=[1.5])


def test_non_functional_model_rejected():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)
    model = Tiny()
    model(tf.zeros((1, 4)))
    with pytest.raises(TypeError, match="not a functional Keras model"):
        add_exits(model, at=["dense"])


def test_keras3_model_rejected():
    fake = type("Functional", (), {"__module__": "keras.src.models.functional",
                                    "name": "k3"})()
    with pytest.raises(TypeError, match="Keras 3"):
        add_exits(fake, at=["x"])


def test_tflite_final_output_found_by_structure_not_name(tmp_path):
    """A final layer named 'dense' sorts before 'exit_0'; the final output is
    still the one depending on every op."""
    import mntk
    from mntk.early_exit.outputs import predict_tflite, tflite_output_order
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="c1")(x)
    h = keras.layers.ReLU(name="r1")(h)
    h = keras.layers.Conv2D(4, 3, name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(x, keras.layers.Dense(3, name="dense")(h))
    multi = add_exits(model, at=["r1"], head="linear")
    path = str(tmp_path / "multi.tflite")
    mntk.export.to_tflite(multi, path, progress=False)
    assert tflite_output_order(path) == ["exit_0", "dense"]
    data = np.random.RandomState(0).rand(5, 8, 8, 1).astype("float32")
    names, outputs = predict_tflite(path, data)
    for got, want in zip(outputs, multi.predict(data, verbose=0)):
        np.testing.assert_allclose(got, want, atol=1e-5)
