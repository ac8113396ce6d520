"""Entry schedules: equal cosine cycles (torch CosineAnnealingLR per cycle),
step decay, optimizer resets, coupled L2."""
import math

import numpy as np
import pytest

import mntk
from mntk import schedules
from mntk.compat import keras


def torch_cosine(epoch, base, floor, t_max):
    # CosineAnnealingLR's closed form: eta_min + (base - eta_min)(1 + cos(pi e / T)) / 2
    return floor + (base - floor) * (1 + math.cos(math.pi * epoch / t_max)) / 2


def test_cosine_cycles_restart_each_cycle_per_epoch():
    steps_per_epoch, epochs_per_cycle = 5, 4
    sched = schedules.CosineCycles(0.1, epochs_per_cycle * steps_per_epoch, 5e-4,
                                   steps_per_epoch=steps_per_epoch)
    for step in range(3 * epochs_per_cycle * steps_per_epoch):
        epoch_in_cycle = (step // steps_per_epoch) % epochs_per_cycle
        assert float(sched(step)) == pytest.approx(
            torch_cosine(epoch_in_cycle, 0.1, 5e-4, epochs_per_cycle), rel=1e-5)
    assert float(sched(20)) == pytest.approx(0.1)        # a fresh cycle starts high
    again = schedules.CosineCycles.from_config(sched.get_config())
    assert float(again(7)) == pytest.approx(float(sched(7)))


def test_cosine_cycles_per_step():
    sched = schedules.CosineCycles(1.0, 10)
    np.testing.assert_allclose([float(sched(s)) for s in range(20)],
                               [0.5 * (1 + math.cos(math.pi * (s % 10) / 10))
                                for s in range(20)], rtol=1e-5, atol=1e-6)


def test_step_decay_switches_at_epochs():
    sched = schedules.step_decay(0.1, (82, 123, 300), (0.01, 0.001, 0.0002), 10)
    # the rate of the first step of each (0-based) epoch
    got = [float(sched(e * 10)) for e in (0, 81, 82, 122, 123, 299, 300, 399)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0002, 0.0002],
                               rtol=1e-6)
    assert float(sched(82 * 10 - 1)) == pytest.approx(0.1)   # last step of epoch 81
    with pytest.raises(ValueError, match="one rate per"):
        schedules.step_decay(0.1, (1, 2), (0.1,), 10)


def test_reset_optimizer_zeroes_momentum_at_cycle_starts():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    x, y = np.ones((8, 3), np.float32), np.zeros((8, 1), np.float32)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            slots = [v for v in self.model.optimizer.variables()
                     if "iteration" not in v.name]
            seen.append(float(sum(np.abs(v.numpy()).sum() for v in slots)))

    reset = schedules.ResetOptimizerState(every_steps=4)
    model.fit(x, y, batch_size=1, epochs=1, verbose=0, callbacks=[reset, Probe()])
    assert reset.resets == 1
    assert seen[4] == 0.0 and seen[3] > 0 and seen[5] > 0


def test_apply_l2_is_coupled_weight_decay():
    """Gradient of the added loss = coefficient * w on the chosen variables."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(3, name="d")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    model = keras.Model(inputs, x)
    for on, names in (("all", {"kernel", "bias", "gamma", "beta"}),
                      ("no_biases", {"kernel", "gamma"}), ("kernels", {"kernel"})):
        m = keras.models.clone_model(model)
        chosen = mntk.regularizers.apply_l2(m, 1e-2, on=on)
        assert {v.name.split("/")[-1].split(":")[0] for v in chosen} == names
        expected = 0.5e-2 * sum(float(np.sum(v.numpy() ** 2)) for v in chosen)
        assert float(m.losses[0]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="on="):
        mntk.regularizers.apply_l2(model, 1e-2, on="weights")
