"""compile_exits: weighted per-exit losses, SDN ramp, frozen backbone."""
import os

import numpy as np
import pytest

from mntk.compat import keras
from mntk import losses as mntk_losses
from mntk.early_exit import (ExitWeightedLoss, ExitWeightRamp, add_exits,
                             compile_exits)


def backbone():
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="block1_out")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="block2_conv")(x)
    x = keras.layers.BatchNormalization(name="block2_bn")(x)
    x = keras.layers.ReLU(name="block2_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x))


def data(n=96):
    rng = np.random.RandomState(0)
    return rng.rand(n, 8, 8, 1).astype("float32"), rng.randint(0, 10, n)


def sparse_ce(logits, labels):
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def test_total_loss_is_weighted_sum():
    multi = add_exits(backbone(), at=["block1_out"], head="linear")
    compile_exits(multi, "sgd", exit_weights=[0.3, 1.5])
    x, y = data()
    exit_logits, final_logits = multi.predict(x, verbose=0)
    expected = 0.3 * sparse_ce(exit_logits, y) + 1.5 * sparse_ce(final_logits, y)
    result = multi.evaluate(x, [y, y], batch_size=len(x), verbose=0,
                            return_dict=True)
    np.testing.assert_allclose(result["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(result["exit_0_loss"],
                               0.3 * sparse_ce(exit_logits, y), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("bn_trainable", [False, True])
def test_frozen_backbone_unchanged(bn_trainable):
    model = backbone()
    multi = add_exits(model, at=["block1_out"], head="osi")
    compile_exits(multi, keras.optimizers.Adam(0.05), freeze_backbone=True,
                  bn_trainable=bn_trainable)
    backbone_weights = [w for layer in model.layers
                        for w in multi.get_layer(layer.name).weights]
    before = {w.name: w.numpy().copy() for w in backbone_weights}
    head_before = [w.numpy().copy() for w in multi.get_layer("exit_0").weights]
    x, y = data()
    multi.fit(x, [y, y], epochs=2, batch_size=32, verbose=0)
    for w in backbone_weights:
        is_bn = "_bn/" in w.name
        if bn_trainable and is_bn:
            continue
        np.testing.assert_array_equal(w.numpy(), before[w.name], err_msg=w.name)
    if bn_trainable:
        # Backbone BN keeps learning its statistics on the new batches.
        moving = multi.get_layer("stem_bn").moving_mean
        assert not np.allclose(moving.numpy(), before[moving.name])
    for a, b in zip(head_before, multi.get_layer("exit_0").weights):
        assert not np.allclose(a, b.numpy())


@pytest.mark.slow
def test_ramp_schedule_and_variables():
    ramp = ExitWeightRamp([0.25, 0.5, 1.0], epochs=3, start=0.01)
    # numpy reference: start + (tau - start) * e / (epochs - 1); final fixed.
    for epoch in range(5):
        progress = min(1.0, epoch / 2)
        expected = [0.01 + (t - 0.01) * progress for t in (0.25, 0.5)] + [1.0]
        np.testing.assert_allclose(ramp.weights_at(epoch), expected)
    model = backbone()
    multi = add_exits(model, at=["block1_out", "block2_out"], head="linear")
    compile_exits(multi, "sgd", exit_weights=ramp)
    x, y = data()
    train_function = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            train_function.append(self.model.train_function)

    history = multi.fit(x, [y] * 3, epochs=3, batch_size=48, verbose=0,
                        callbacks=[ramp, Spy()])
    np.testing.assert_allclose(history.history["exit_weight_0"],
                               [0.01, 0.13, 0.25], rtol=1e-6)
    np.testing.assert_allclose([w.numpy() for w in ramp.weights],
                               ramp.weights_at(2), rtol=1e-6)
    assert all(f is train_function[0] for f in train_function)  # no recompile
    assert ExitWeightRamp(**ramp.get_config()).weights_at(1) == ramp.weights_at(1)


def test_sdn_ramp_uses_cost_fractions():
    import mntk
    multi = add_exits(backbone(), at=["block1_out"], head="linear")
    exit_ops = mntk.cost.estimate(multi).exit_ops
    ramp = ExitWeightRamp.sdn(multi, epochs=4)
    np.testing.assert_allclose(ramp.final_weights,
                               [exit_ops[0] / exit_ops[1], 1.0])


@pytest.mark.slow
def test_osi_and_adaptive_smoothing_losses_per_exit(tmp_path):
    multi = add_exits(backbone(), at=["block1_out"], head="osi")
    smoothing = mntk_losses.AdaptiveLabelSmoothing(multi.get_layer("logits"),
                                                   epsilon=0.1)
    refresh = smoothing.callback()
    compile_exits(multi, "adam",
                  loss=[mntk_losses.ConfidenceWeighted(), smoothing],
                  exit_weights=[0.5, 1.0])
    x, y = data()
    exit_logits, _ = multi.predict(x, verbose=0)
    p = np.exp(exit_logits - exit_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ce = -np.log(p[np.arange(len(y)), y])
    expected = 0.5 * np.mean(ce * (1 + p.max(-1)))
    got = multi.evaluate(x, [y, y], batch_size=len(x), verbose=0,
                         return_dict=True)["exit_0_loss"]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    history = multi.fit(x, [y, y], epochs=1, verbose=0,
                        callbacks=[refresh])
    assert np.isfinite(history.history["loss"][0])
    path = os.path.join(tmp_path, "m.keras")
    multi.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0)[0],
                               multi.predict(x, verbose=0)[0], rtol=1e-5, atol=1e-6)


def test_weighted_loss_config_round_trip():
    loss = ExitWeightedLoss(keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), weight=0.4, name="w")
    clone = ExitWeightedLoss.from_config(loss.get_config())
    y = np.array([1, 2])
    z = np.random.RandomState(0).randn(2, 3).astype("float32")
    np.testing.assert_allclose(clone(y, z).numpy(), loss(y, z).numpy())
    np.testing.assert_allclose(loss(y, z).numpy(), 0.4 * sparse_ce(z, y), rtol=1e-5)


def test_argument_errors():
    multi = add_exits(backbone(), at=["block1_out"], head="linear")
    with pytest.raises(ValueError, match="got 3 losses for 2 outputs"):
        compile_exits(multi, "sgd", loss=["mse"] * 3)
    with pytest.raises(ValueError, match="must be 2 finite numbers"):
        compile_exits(multi, "sgd", exit_weights=[1.0])
    with pytest.raises(ValueError, match="output names"):
        compile_exits(multi, "sgd", loss={"exit_0": "mse"})
    with pytest.raises(ValueError, match="has 1 output"):
        compile_exits(backbone(), "sgd")


def _snapshot(model):
    return ([w.copy() for w in model.get_weights()], [l.trainable for l in model.layers],
            len(model.losses), model.to_json())


def _assert_untouched(model, snapshot):
    weights, trainable, losses, config = snapshot
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert [l.trainable for l in model.layers] == trainable
    assert len(model.losses) == losses and model.to_json() == config


@pytest.mark.slow
def test_add_and_compile_exits_leave_the_model_untouched():
    model = backbone()
    before = _snapshot(model)
    multi = add_exits(model, at=["block1_out"], head="osi")
    compile_exits(multi, keras.optimizers.Adam(0.05), freeze_backbone=True)
    x, y = data(32)
    multi.fit(x, [y, y], epochs=1, batch_size=16, verbose=0)
    _assert_untouched(model, before)
    assert model.trainable_weights and not multi.get_layer("stem").trainable
    multi2 = add_exits(model, at=["block1_out"], head="linear")
    compile_exits(multi2, "sgd")
    multi2.fit(x, [y, y], epochs=1, batch_size=16, verbose=0)  # joint training
    _assert_untouched(model, before)


def test_softmax_output_rewired_by_add_exits_refused_by_compile_exits():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    h = keras.layers.ReLU(name="r1")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inputs, keras.layers.Dense(
        10, activation="softmax", name="predictions")(h))
    with pytest.warns(UserWarning, match="softmax"):
        multi = add_exits(model, at=["r1"], head="linear")
    x, _ = data(4)
    logits = multi.predict(x, verbose=0)[-1]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, model.predict(x, verbose=0), rtol=1e-5, atol=1e-7)
    compile_exits(multi, "sgd")  # logits now: accepted
    # A hand-built multi-exit model that still ends in softmax is refused.
    exit_logits = keras.layers.Dense(10, name="exit_0")(
        keras.layers.GlobalAveragePooling2D()(model.get_layer("r1").output))
    hand = keras.Model(model.inputs, [exit_logits, model.output])
    with pytest.raises(ValueError, match="'predictions'.*softmax.*to_logits") as err:
        compile_exits(hand, "sgd")
    assert "\n" not in str(err.value)
    compile_exits(hand, "sgd", loss=[
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=False)])


def test_apply_srip_changes_only_losses_and_metrics():
    import mntk
    model = backbone()
    weights, trainable, losses, config = _snapshot(model)
    mntk.regularizers.apply_srip(model, 1e-2, layers="conv")
    assert len(model.losses) == losses + 1  # documented: it adds the SRIP loss
    _assert_untouched(model, (weights, trainable, len(model.losses), config))
