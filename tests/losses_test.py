"""Tests of mntk.losses (AdaptiveLabelSmoothing, ConfidenceWeighted) against numpy."""
import warnings

import numpy as np
import pytest
import tensorflow as tf

from mntk import losses as L
from mntk.compat import keras

C = 5


def classifier(seed=0, in_dim=6, kernel=None):
    layer = keras.layers.Dense(C, name="logits")
    layer.build((None, in_dim))
    if kernel is None:
        kernel = np.random.RandomState(seed).randn(in_dim, C)
    layer.kernel.assign(np.asarray(kernel, "float32"))
    return layer


def np_similarity(kernel):
    w = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    cos = np.abs(w.T @ w)
    a = np.exp(cos)
    np.fill_diagonal(a, 0.0)
    return a / a.sum(axis=1, keepdims=True)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


LABELS = np.array([0, 3, 4, 1, 3, 2])


def label_formats():
    one_hot = np.eye(C, dtype="float32")[LABELS]
    lam = 0.7
    soft = lam * one_hot + (1 - lam) * np.eye(C, dtype="float32")[np.roll(LABELS, 1)]
    return {"sparse": LABELS, "sparse_column": LABELS[:, None], "one_hot": one_hot,
            "mixup": soft}


def test_class_similarity_matches_numpy():
    layer = classifier()
    a = L.class_similarity(layer.kernel).numpy()
    np.testing.assert_allclose(a, np_similarity(layer.kernel.numpy().astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(np.diag(a), 0.0)
    np.testing.assert_allclose(a.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("fmt", sorted(label_formats()))
def test_smoothed_targets_match_formula(fmt):
    layer = classifier()
    loss = L.AdaptiveLabelSmoothing(layer, epsilon=0.3, refresh="step")
    y = label_formats()[fmt]
    targets = loss.smoothed_targets(tf.constant(y)).numpy()
    dense = np.eye(C)[y.reshape(-1)] if fmt.startswith("sparse") else y
    expected = 0.7 * dense + 0.3 * dense @ np_similarity(layer.kernel.numpy().astype(np.float64))
    np.testing.assert_allclose(targets, expected, atol=1e-6)
    assert targets.min() >= 0.0
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    if fmt == "sparse":
        np.testing.assert_allclose(targets[np.arange(len(y)), y], 0.7, rtol=1e-6)


def test_soft_labels_smooth_by_linearity():
    loss = L.AdaptiveLabelSmoothing(classifier(), epsilon=0.3, refresh="step")
    one_hot = np.eye(C, dtype="float32")
    a, b = one_hot[LABELS], one_hot[np.roll(LABELS, 2)]
    mixed = loss.smoothed_targets(tf.constant(0.4 * a + 0.6 * b)).numpy()
    parts = 0.4 * loss.smoothed_targets(tf.constant(a)) + 0.6 * loss.smoothed_targets(tf.constant(b))
    np.testing.assert_allclose(mixed, parts.numpy(), atol=1e-6)


@pytest.mark.parametrize("equal_kernel", ["identical_columns", "orthogonal_columns"])
def test_equal_similarities_reduce_to_keras_label_smoothing(equal_kernel):
    # All |cos| equal -> A[k, i] = 1/(C-1): targets 1 - eps and eps/(C-1). Keras
    # spreads eps_k/C over all C classes (true: 1 - eps_k + eps_k/C), so
    # eps/(C-1) = eps_k/C, i.e. eps_k = eps * C / (C - 1).
    kernel = np.ones((6, C)) if equal_kernel == "identical_columns" else np.eye(6)[:, :C]
    eps = 0.3
    loss = L.AdaptiveLabelSmoothing(classifier(kernel=kernel), epsilon=eps)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                      label_smoothing=eps * C / (C - 1))
    logits = np.random.RandomState(1).randn(len(LABELS), C).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = float(loss(LABELS, logits))
    np.testing.assert_allclose(ours, float(keras_loss(np.eye(C)[LABELS], logits)), rtol=1e-5)


@pytest.mark.parametrize("from_logits", [True, False])
def test_loss_is_cross_entropy_against_targets(from_logits):
    layer = classifier(seed=2)
    loss = L.AdaptiveLabelSmoothing(layer, epsilon=0.1, from_logits=from_logits, refresh="step")
    logits = np.random.RandomState(3).randn(len(LABELS), C)
    expected_targets = 0.9 * np.eye(C)[LABELS] + 0.1 * np_similarity(
        layer.kernel.numpy().astype(np.float64))[LABELS]
    expected = np.mean(-np.sum(expected_targets * np_log_softmax(logits), axis=1))
    y_pred = logits if from_logits else np.exp(np_log_softmax(logits))
    np.testing.assert_allclose(float(loss(LABELS, y_pred.astype("float32"))), expected, rtol=1e-5)


def test_no_gradient_through_similarity():
    layer = classifier()
    loss = L.AdaptiveLabelSmoothing(layer, refresh="step")
    logits = tf.constant(np.random.RandomState(0).randn(len(LABELS), C).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        value = loss(LABELS, logits)
    assert tape.gradient(value, layer.kernel) is None
    assert tape.gradient(value, logits) is not None


def test_epoch_mode_computes_on_first_use_and_warns_without_callback():
    layer = classifier()
    loss = L.AdaptiveLabelSmoothing(layer, refresh="epoch")
    assert float(loss.similarity_ready) == 0.0
    with pytest.warns(UserWarning, match="refresh callback"):
        loss.smoothed_targets(tf.constant(LABELS))
    assert float(loss.similarity_ready) == 1.0
    start = loss.similarity.numpy()
    np.testing.assert_allclose(start, np_similarity(layer.kernel.numpy().astype(np.float64)), atol=1e-6)
    layer.kernel.assign(np.random.RandomState(9).randn(6, C).astype("float32"))
    loss.smoothed_targets(tf.constant(LABELS))
    np.testing.assert_allclose(loss.similarity.numpy(), start)  # kept until a refresh
    loss.callback().on_epoch_begin(1)
    np.testing.assert_allclose(loss.similarity.numpy(),
                               np_similarity(layer.kernel.numpy().astype(np.float64)), atol=1e-6)


def test_step_mode_follows_the_kernel_immediately():
    layer = classifier()
    loss = L.AdaptiveLabelSmoothing(layer, refresh="step")
    before = loss.smoothed_targets(tf.constant(LABELS)).numpy()
    layer.kernel.assign(np.random.RandomState(9).randn(6, C).astype("float32"))
    after = loss.smoothed_targets(tf.constant(LABELS)).numpy()
    expected = 0.7 * np.eye(C)[LABELS] + 0.3 * np_similarity(
        layer.kernel.numpy().astype(np.float64))[LABELS]
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, expected, atol=1e-6)


def two_exit_model():
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(12, activation="relu", name="hidden")(inputs)
    exit1 = keras.layers.Dense(C, name="exit1")(hidden)
    deeper = keras.layers.Dense(12, activation="relu", name="deeper")(hidden)
    return keras.Model(inputs, [exit1, keras.layers.Dense(C, name="logits")(deeper)])


def xy(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8).astype("float32"), rng.randint(0, C, n)


def test_refresh_callback_recomputes_each_epoch_in_fit():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(C, name="logits")(inputs))
    loss = L.AdaptiveLabelSmoothing(model.get_layer("logits"), epsilon=0.3)
    model.compile(keras.optimizers.SGD(0.5), loss)
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append(
        (loss.similarity.numpy(), np_similarity(model.get_layer("logits").kernel.numpy()))))
    model.fit(*xy(), epochs=3, verbose=0, callbacks=[loss.callback(), record])
    for stored, fresh in seen:
        np.testing.assert_allclose(stored, fresh, atol=1e-5)
    assert not np.allclose(seen[0][0], seen[-1][0])


@pytest.mark.slow
def test_one_of_several_losses_of_a_multi_output_model():
    model = two_exit_model()
    exit_loss = L.AdaptiveLabelSmoothing(model.get_layer("exit1"), epsilon=0.2, refresh="step")
    final_loss = L.AdaptiveLabelSmoothing(model.get_layer("logits"), epsilon=0.3)
    model.compile("sgd", [exit_loss, final_loss], loss_weights=[0.5, 1.0])
    x, y = xy()
    model.fit(x, [y, y], epochs=2, verbose=0, callbacks=[final_loss.callback()])
    logits1, logits2 = (o.numpy().astype(np.float64) for o in model(x))
    t1 = 0.8 * np.eye(C)[y] + 0.2 * np_similarity(model.get_layer("exit1").kernel.numpy())[y]
    t2 = 0.7 * np.eye(C)[y] + 0.3 * final_loss.similarity.numpy()[y]
    expected = (0.5 * np.mean(-np.sum(t1 * np_log_softmax(logits1), 1))
                + np.mean(-np.sum(t2 * np_log_softmax(logits2), 1)))
    np.testing.assert_allclose(model.evaluate(x, [y, y], verbose=0)[0], expected, rtol=1e-4)


def test_get_config_round_trip_and_bind():
    model = two_exit_model()
    loss = L.AdaptiveLabelSmoothing(model.get_layer("logits"), epsilon=0.25, refresh="step")
    config = keras.losses.serialize(loss)
    clone = keras.losses.deserialize(config)
    assert clone.get_config() == loss.get_config()
    assert clone.get_config()["classifier"] == "logits" and clone.num_classes == C
    with pytest.raises(ValueError, match="bind"):
        clone.kernel
    clone.bind(model)
    logits = np.random.RandomState(0).randn(len(LABELS), C).astype("float32")
    np.testing.assert_allclose(float(clone(LABELS, logits)), float(loss(LABELS, logits)), rtol=1e-6)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        L.AdaptiveLabelSmoothing("nope", num_classes=C).bind(model)


@pytest.mark.slow
def test_compiled_model_saves_and_loads_with_same_loss(tmp_path):
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(C, name="logits")(inputs))
    loss = L.AdaptiveLabelSmoothing(model.get_layer("logits"), epsilon=0.3)
    model.compile(keras.optimizers.SGD(0.5), loss)
    x, y = xy()
    model.fit(x, y, epochs=2, verbose=0, callbacks=[loss.callback()])
    # The weights moved after the last refresh: the stored A differs from a fresh one.
    assert not np.allclose(loss.similarity.numpy(),
                           np_similarity(model.get_layer("logits").kernel.numpy()), atol=1e-6)
    before = model.evaluate(x, y, verbose=0)
    model.save(tmp_path / "als.keras")
    loaded = keras.models.load_model(tmp_path / "als.keras")
    assert isinstance(loaded.loss, L.AdaptiveLabelSmoothing)
    np.testing.assert_allclose(loaded.loss.similarity.numpy(), loss.similarity.numpy())
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), before, rtol=1e-6)
    history = loaded.fit(x, y, epochs=1, verbose=0, callbacks=[loaded.loss.callback()]).history
    assert np.isfinite(history["loss"][0])


@pytest.mark.slow
@pytest.mark.parametrize("refresh", ["epoch", "step"])
def test_mirrored_strategy_matches_one_replica(refresh):
    x, y = xy(8)
    histories = []
    for strategy in (tf.distribute.get_strategy(),
                     tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            inputs = keras.Input((8,))
            model = keras.Model(inputs, keras.layers.Dense(C, name="logits")(inputs))
            loss = L.AdaptiveLabelSmoothing(model.get_layer("logits"), refresh=refresh)
            model.compile(keras.optimizers.SGD(0.5), loss)
        callbacks = [loss.callback()] if refresh == "epoch" else []
        histories.append(model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                                   callbacks=callbacks).history["loss"])
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-5)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="epsilon"):
        L.AdaptiveLabelSmoothing(classifier(), epsilon=1.5)
    with pytest.raises(ValueError, match="refresh"):
        L.AdaptiveLabelSmoothing(classifier(), refresh="batch")
    conv = keras.layers.Conv2D(3, 3, name="conv")  # 3x3: not a classifier
    conv.build((None, 4, 4, 2))
    with pytest.raises(ValueError, match="'conv'.*Dense"):
        L.AdaptiveLabelSmoothing(conv)
    with pytest.raises(ValueError, match="num_classes"):
        L.AdaptiveLabelSmoothing("logits")


def _softmax_head_model(kind):
    x = keras.Input((4, 4, 2))
    h = keras.layers.GlobalAveragePooling2D(keepdims=kind == "conv1x1")(x)
    if kind == "conv1x1":  # MobileNetV3: 1x1 Conv2D 'Logits' -> Flatten -> softmax
        h = keras.layers.Conv2D(C, 1, name="Logits")(h)
        h = keras.layers.Flatten()(h)
        return keras.Model(x, keras.layers.Activation("softmax")(h)), "Logits"
    return keras.Model(x, keras.layers.Dense(C, activation="softmax",
                                             name="predictions")(h)), "predictions"


@pytest.mark.parametrize("kind", ["dense", "conv1x1"])
def test_softmax_head_refused_then_rewired_to_logits(kind):
    from mntk import softmax_heads
    model, name = _softmax_head_model(kind)
    with pytest.raises(ValueError, match="probabilities.*to_logits") as err:
        L.AdaptiveLabelSmoothing(model.get_layer(name))
    assert "\n" not in str(err.value)
    # probabilities with from_logits=False are fine
    L.AdaptiveLabelSmoothing(model.get_layer(name), from_logits=False)
    logits_model = softmax_heads.to_logits(model)
    loss = L.AdaptiveLabelSmoothing(logits_model.get_layer(name), epsilon=0.3,
                                    refresh="step")
    kernel = logits_model.get_layer(name).get_weights()[0].reshape(-1, C)
    np.testing.assert_allclose(loss.current_similarity().numpy(),
                               np_similarity(kernel.astype(np.float64)), atol=1e-6)
    x = np.random.RandomState(0).rand(6, 4, 4, 2).astype("float32")
    logits = logits_model(x).numpy()
    targets = loss.smoothed_targets(tf.constant(LABELS)).numpy()
    expected = -(targets * np_log_softmax(logits)).sum(-1).mean()
    assert float(loss(LABELS, logits)) == pytest.approx(expected, rel=1e-5)


# -- ConfidenceWeighted ---------------------------------------------------------
@pytest.mark.parametrize("fmt", ["sparse", "one_hot"])
def test_confidence_weighted_matches_numpy(fmt):
    logits = np.random.RandomState(0).randn(len(LABELS), C)
    log_p = np_log_softmax(logits)
    per_example = -log_p[np.arange(len(LABELS)), LABELS] * (1.0 + np.exp(log_p).max(axis=1))
    y = label_formats()[fmt]
    value = L.ConfidenceWeighted()(y, logits.astype("float32"))
    np.testing.assert_allclose(float(value), per_example.mean(), rtol=1e-5)
    probs = L.ConfidenceWeighted(from_logits=False)(y, np.exp(log_p).astype("float32"))
    np.testing.assert_allclose(float(probs), per_example.mean(), rtol=1e-5)


def test_confidence_weight_is_constant_unless_asked():
    logits = tf.constant(np.random.RandomState(0).randn(len(LABELS), C).astype("float32"))
    weight = 1.0 + tf.reduce_max(tf.nn.softmax(logits), axis=-1)
    grads = {}
    for flag in (False, True):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = L.ConfidenceWeighted(weight_gradient=flag)(LABELS, logits)
        grads[flag] = tape.gradient(value, logits).numpy()
    with tf.GradientTape() as tape:
        tape.watch(logits)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(LABELS, logits)
        reference = tf.reduce_mean(ce * tf.stop_gradient(weight))
    np.testing.assert_allclose(grads[False], tape.gradient(reference, logits).numpy(), atol=1e-6)
    assert not np.allclose(grads[True], grads[False])


def test_confidence_weighted_config_round_trip():
    loss = L.ConfidenceWeighted(from_logits=False, weight_gradient=True)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, L.ConfidenceWeighted) and clone.get_config() == loss.get_config()


def test_distillation_rewires_a_softmax_teacher_to_logits():
    model, _ = _softmax_head_model("dense")
    loss = L.Distillation(model, temperature=2.0, alpha=0.5)
    x = np.random.RandomState(3).rand(4, 4, 4, 2).astype("float32")
    targets = loss.targets(x, np.arange(4))
    probs = model.predict(x, verbose=0)
    # the teacher's logits, up to a constant per row: softmax(logits) = probs
    teacher = targets[:, 1:]
    np.testing.assert_allclose(np.exp(teacher) / np.exp(teacher).sum(-1, keepdims=True),
                               probs, rtol=1e-5, atol=1e-7)
    assert not np.allclose(teacher, probs)
