"""mntk.callbacks.StochasticWeightAveraging: the average of the chosen steps,
BatchNorm statistics recomputed for it, resumable state, clear errors."""
import numpy as np
import pytest
import tensorflow as tf

from mntk.callbacks import StochasticWeightAveraging, recompute_batch_norm
from mntk.compat import keras


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, size=n)


def _model(bn=False):
    x = keras.Input((6,))
    h = keras.layers.Dense(8, name="fc1")(x)
    if bn:
        h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    out = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(x, out)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _EveryStep(keras.callbacks.Callback):
    """Trainable weights after each step, keyed by steps done n = epoch*S + batch + 1."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.seen = steps, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        n = self.epoch * self.steps + batch + 1
        self.seen[n] = [w.numpy().copy() for w in self.model.trainable_weights]


def _mean(seen, points):
    return [np.mean([seen[n][i] for n in points], axis=0) for i in range(len(seen[points[0]]))]


def test_average_of_the_chosen_steps_is_swapped_in():
    x, y = _data()
    model = _model()
    recorder = _EveryStep(steps=4)
    # 4 steps per epoch: start 1.5 epochs = after step 6, every half epoch = 2 steps
    swa = StochasticWeightAveraging(start=1.5, period=0.5)
    model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0,
              callbacks=[recorder, swa])
    assert int(swa.count.numpy()) == 4
    expected = _mean(recorder.seen, [6, 8, 10, 12])
    for got, want in zip(model.trainable_weights, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # and the model really moved between those points
    assert not np.allclose(recorder.seen[6][0], recorder.seen[12][0])


def test_batch_norm_statistics_recomputed_for_the_average():
    x, y = _data()
    model = _model(bn=True)
    swa = StochasticWeightAveraging(start=1, period=1, bn_data=x, bn_steps=None)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[swa])
    # reference: batches of 128 -> one batch of 64; BN input = fc1(x) with the
    # averaged weights; the layer's own per-batch statistics, averaged
    kernel, bias = model.get_layer("fc1").get_weights()
    h = x @ kernel + bias
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(axis=0), rtol=1e-4, atol=1e-5)
    # several batches: the plain mean of each batch's statistics
    batches = tf.data.Dataset.from_tensor_slices(x).batch(16)
    assert recompute_batch_norm(model, batches) == 4
    parts = h.reshape(4, 16, -1)
    np.testing.assert_allclose(bn.moving_mean.numpy(), parts.mean(axis=1).mean(axis=0),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), parts.var(axis=1).mean(axis=0),
                               rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored after the pass


def test_state_resumes_the_same_average(tmp_path):
    x, y = _data()
    model = _model()
    recorder = _EveryStep(steps=4)
    swa = StochasticWeightAveraging(start=1, period=0.25, swap_at_end=False)
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[recorder, swa])
    path = tf.train.Checkpoint(state=swa.variables).save(str(tmp_path / "swa"))
    resumed = StochasticWeightAveraging.from_config(swa.get_config(), model=model)
    tf.train.Checkpoint(state=resumed.variables).restore(path)
    resumed.swap_at_end = True
    model.fit(x, y, batch_size=16, epochs=3, initial_epoch=2, shuffle=False, verbose=0,
              callbacks=[recorder, resumed])
    assert int(resumed.count.numpy()) == 9  # after steps 4..12
    for got, want in zip(model.trainable_weights, _mean(recorder.seen, list(range(4, 13)))):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_errors_say_what_to_do():
    x, y = _data()
    with pytest.raises(ValueError, match="bn_data"):
        _model(bn=True).fit(x, y, epochs=1, verbose=0,
                            callbacks=[StochasticWeightAveraging()])
    with pytest.raises(ValueError, match="no weights were averaged"):
        _model().fit(x, y, epochs=1, verbose=0,
                     callbacks=[StochasticWeightAveraging(start=5)])
    with pytest.raises(ValueError, match="period"):
        StochasticWeightAveraging(period=0)


def test_cycles_swap_each_average_in_and_restart():
    """Texas-EIC's SWA fine-tune three times in a row: cycle=1 epoch."""
    x, y = _data()
    model = _model()
    recorder = _EveryStep(steps=4)
    # 4 steps an epoch; in each epoch: start after step 2 of it, every step
    swa = StochasticWeightAveraging(start=0.5, period=0.25, cycle=1)
    swapped = {}

    class AfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            swapped[epoch] = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
              callbacks=[recorder, swa, AfterEpoch()])
    for got, want in zip(swapped[0], _mean(recorder.seen, [2, 3, 4])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(model.trainable_weights, _mean(recorder.seen, [6, 7, 8])):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert int(swa.count.numpy()) == 0
    assert StochasticWeightAveraging.from_config(swa.get_config()).cycle == 1
