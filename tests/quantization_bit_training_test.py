"""mntk.quantization.bit_training: the bit widths' own Adam, stepped only in
alternate tenths of an epoch (Texas-EIC trainer.py:240-244), the loss phases,
and the entry's loss terms, each against a numpy reference written here."""
import numpy as np
import pytest
import tensorflow as tf

from mntk.compat import keras
from mntk.quantization import (BitWidthAdam, CostTarget, CrossEntropyWithLogitDistance,
                               PrecisionPhases, bits_step_open)

B1, B2, EPS = 0.9, 0.999, 1e-7


class _Scaled(keras.layers.Layer):
    """y = x * g: g is named like a learned quantizer's bit width (``*_gamma``)."""

    def build(self, shape):
        self.g = self.add_weight("scale_gamma", shape=(int(shape[-1]),),
                                 initializer="ones")

    def call(self, x):
        return x * self.g


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((4,))
    h = _Scaled(name="bits")(x)
    out = keras.layers.Dense(3, name="fc")(h)
    return keras.Model(x, out)


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, size=n)


def _open_reference(step, steps_per_epoch):
    """Texas-EIC: ten tenths of S/10 steps; bits train in tenths k = 0, 2, 4, ..."""
    tenth = (step % steps_per_epoch) // (steps_per_epoch // 10)
    return tenth % 2 == 0


def test_tenths_rule():
    for s in (10, 20, 50):
        got = [bits_step_open(i, s) for i in range(3 * s)]
        want = [_open_reference(i, s) for i in range(3 * s)]
        assert got == want
        graph = [bool(bits_step_open(tf.constant(i, tf.int64), s)) for i in range(3 * s)]
        assert graph == want
    assert all(bits_step_open(i, 20, "all") for i in range(20))


def _adam(param, grads, lr, gates):
    """Adam (Kingma & Ba) with its own step count, stepping only where gates[i]."""
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    t = 0
    for g, gate in zip(grads, gates):
        if not gate:
            continue
        t += 1
        m = B1 * m + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        param = param - lr * np.sqrt(1 - B2 ** t) / (1 - B1 ** t) * m / (np.sqrt(v) + EPS)
    return param


def test_two_rates_and_gated_bits_match_numpy_adam():
    rng = np.random.default_rng(1)
    w0, g0 = rng.normal(size=(3,)).astype("float32"), np.ones(2, "float32")
    w = tf.Variable(w0, name="kernel")
    g = tf.Variable(g0, name="conv/kernel_gamma")
    opt = BitWidthAdam(3e-2, bits_learning_rate=1e-1, steps_per_epoch=10,
                       bits_tenths="alternate", epsilon=EPS)
    steps = 25
    gw = rng.normal(size=(steps, 3)).astype("float32")
    gg = rng.normal(size=(steps, 2)).astype("float32")
    for i in range(steps):
        opt.apply_gradients([(tf.constant(gw[i]), w), (tf.constant(gg[i]), g)])
    np.testing.assert_allclose(w.numpy(), _adam(w0, gw, 3e-2, [True] * steps), rtol=1e-5)
    gates = [_open_reference(i, 10) for i in range(steps)]
    np.testing.assert_allclose(g.numpy(), _adam(g0, gg, 1e-1, gates), rtol=1e-5)


def test_bits_change_only_in_odd_tenths_other_weights_every_step():
    s = 20
    x, y = _data(s * 8)
    model = _model()
    model.compile(BitWidthAdam(1e-2, bits_learning_rate=1e-2, steps_per_epoch=s,
                               bits_tenths="alternate"),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append([v.numpy().copy() for v in (model.get_layer("bits").g,
                                                    model.get_layer("fc").kernel)])
    before = [model.get_layer("bits").g.numpy().copy(), model.get_layer("fc").kernel.numpy()]
    model.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=s, shuffle=False, verbose=0,
              callbacks=[Record()])
    assert len(seen) == 2 * s
    prev = before
    for step, now in enumerate(seen):
        bits_moved = not np.array_equal(now[0], prev[0])
        assert bits_moved == _open_reference(step, s), step
        assert not np.array_equal(now[1], prev[1]), step
        prev = now


def _fit_phases(epochs, backup=None, model=None):
    s = 10
    x, y = _data(s * 8)
    model = model or _model()
    phases = PrecisionPhases([(1, 7.0, 85.0, True), (1, 7.0, 115.0, False)])
    model.compile(BitWidthAdam(1e-2, bits_learning_rate=1e-1, steps_per_epoch=s,
                               bits_tenths="all"),
                  CrossEntropyWithLogitDistance(alpha=phases.alpha, distance=0.0))
    model.add_loss(lambda: phases.beta * 1e-3 * tf.reduce_sum(model.get_layer("bits").g))
    seen = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch] = (model.get_layer("bits").g.numpy().copy(),
                           float(phases.alpha.numpy()), float(phases.beta.numpy()))
    callbacks = [phases, Record()]
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False))
    model.fit(x, y, batch_size=8, epochs=epochs, steps_per_epoch=s, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model, seen


def test_phases_set_weights_and_freeze_bits(tmp_path):
    before = _model().get_layer("bits").g.numpy()
    model, seen = _fit_phases(2)
    assert seen[0][1:] == (7.0, 85.0) and seen[1][1:] == (7.0, 115.0)
    assert not np.array_equal(seen[0][0], before)      # phase 1 trains the bits
    np.testing.assert_array_equal(seen[1][0], seen[0][0])  # phase 2 does not


def test_bit_optimizer_state_resumes_with_backup_and_restore(tmp_path):
    whole, _ = _fit_phases(2)
    # an interrupted run: one epoch backed up, then a fresh model resumes at epoch 1
    _fit_phases(1, backup=str(tmp_path / "backup"))
    resumed, seen = _fit_phases(2, backup=str(tmp_path / "backup"), model=_model(seed=5))
    assert sorted(seen) == [1]   # really resumed: epoch 0 was not run again
    for a, b in zip(whole.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)
    steps = [v for v in resumed.optimizer.variables() if "bit_steps" in v.name]
    assert steps and float(steps[0].numpy()) == 10.0   # 10 open steps in phase 1


def test_cross_entropy_with_logit_distance_matches_numpy():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(5, 4)).astype("float32")
    t = rng.normal(size=(5, 4)).astype("float32")
    y = rng.integers(0, 4, size=5)
    alpha = tf.Variable(7.0)
    loss = CrossEntropyWithLogitDistance(alpha=alpha, distance=0.01)
    got = float(loss(np.concatenate([y[:, None].astype("float32"), t], 1), z))
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    ce = -logp[np.arange(5), y]
    want = np.mean(7.0 * ce + 0.01 * np.sqrt((z - t) ** 2 + 1e-5).sum(1))
    assert got == pytest.approx(want, rel=1e-5)
    alpha.assign(25.0)   # read at every call
    plain = CrossEntropyWithLogitDistance(alpha=alpha, distance=0.0)
    assert float(plain(y, z)) == pytest.approx(np.mean(25.0 * ce), rel=1e-5)
    assert CrossEntropyWithLogitDistance.from_config(loss.get_config()).alpha == 25.0
    smooth = CrossEntropyWithLogitDistance(distance=0.0, label_smoothing=0.1)
    targets = np.full((5, 4), 0.1 / 4)
    targets[np.arange(5), y] += 0.9
    assert float(smooth(y, z)) == pytest.approx(np.mean(-(targets * logp).sum(1)), rel=1e-5)


def test_cost_term_is_sign_times_beta_times_m():
    class Fixed(CostTarget):
        def __init__(self, value, **kw):
            super().__init__(**kw)
            self.fixed = value

        def value(self):
            return tf.constant(self.fixed)
    beta = tf.Variable(85.0)
    for m in (0.25, 0.12):
        term = Fixed(m, target=0.18, coefficient=beta, relative=False)
        assert float(term()) == pytest.approx(np.sign(m - 0.18) * 85.0 * m, rel=1e-6)
    beta.assign(115.0)
    assert float(term()) == pytest.approx(-115.0 * 0.12, rel=1e-6)
    assert float(Fixed(0.25, target=0.18, coefficient=2.0)()) == pytest.approx(2.0 * 0.25 / 0.18)
    assert term.get_config()["relative"] is False and term.get_config()["coefficient"] == 115.0


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        BitWidthAdam(1e-3, bits_tenths="alternate")
    with pytest.raises(ValueError, match="phase 0"):
        PrecisionPhases([(0, 7.0, 85.0, True)])
