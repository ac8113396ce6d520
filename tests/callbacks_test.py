"""Tests of mntk.callbacks.CoefficientSchedule."""
import numpy as np
import pytest
import tensorflow as tf

from mntk import callbacks as CB
from mntk import regularizers as R
from mntk.compat import keras


def schedule_values(schedule, epochs, start=1e-2, **kwargs):
    variable = tf.Variable(start)
    callback = CB.CoefficientSchedule(schedule, target=variable, **kwargs)
    callback.on_train_begin()
    values = []
    for epoch in epochs:
        callback.on_epoch_begin(epoch)
        values.append(float(variable.numpy()))
    return values


def test_srip_paper_preset_is_the_reference_codes_factors():
    # The SRIP reference code: lambda0 times 1 (< 20), 1e-3 (20-49), 1e-4
    # (50-69), 1e-6 (70-119), 0 (120+); here lambda0 = 1e-2.
    epochs = [0, 19, 20, 49, 50, 69, 70, 119, 120, 199]
    factors = np.array([1, 1, 1e-3, 1e-3, 1e-4, 1e-4, 1e-6, 1e-6, 0, 0])
    np.testing.assert_allclose(schedule_values("srip_paper", epochs), 1e-2 * factors,
                               rtol=1e-6)
    np.testing.assert_allclose(schedule_values("srip_paper", epochs, base=0.7), 0.7 * factors,
                               rtol=1e-6)


def test_srip_paper_absolute_preset_is_the_papers_values():
    # The paper's text: 0.1 -> 1e-3 at 20 -> 1e-4 at 50 -> 1e-6 at 70 -> 0 at 120,
    # whatever the coefficient was built with.
    epochs = [0, 19, 20, 49, 50, 69, 70, 119, 120, 199]
    expected = [0.1, 0.1, 1e-3, 1e-3, 1e-4, 1e-4, 1e-6, 1e-6, 0.0, 0.0]
    np.testing.assert_allclose(schedule_values("srip_paper_absolute", epochs, start=5.0),
                               expected, rtol=1e-6)
    config = CB.CoefficientSchedule("srip_paper_absolute").get_config()
    assert config["relative"] is False


def test_dict_schedule_is_piecewise_constant_and_keeps_base_before_first_key():
    values = schedule_values({2: 0.5, 4: 0.25}, [0, 1, 2, 3, 4, 9], start=1.0)
    np.testing.assert_allclose(values, [1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    relative = schedule_values({0: 2.0, 3: 0.5}, [0, 3], start=0.1, relative=True)
    np.testing.assert_allclose(relative, [0.2, 0.05], rtol=1e-6)


def test_callable_schedule():
    np.testing.assert_allclose(schedule_values(lambda e: 1.0 / (e + 1), [0, 1, 3]),
                               [1.0, 0.5, 0.25])


def test_targets_regularizer_objects_and_lists():
    a, b = R.SRIP(0.1), R.SO(0.2)
    callback = CB.CoefficientSchedule("srip_paper", target=[a, b])
    callback.on_train_begin()
    callback.on_epoch_begin(20)
    np.testing.assert_allclose([a.coefficient.numpy(), b.coefficient.numpy()], [1e-4, 2e-4],
                               rtol=1e-6)    # 1e-3 of each base
    callback.on_train_begin()  # a second fit keeps the first bases
    callback.on_epoch_begin(0)
    np.testing.assert_allclose(a.coefficient.numpy(), 0.1, rtol=1e-6)


def model_with_srip():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(6, 1, name="pw")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(x))
    srip = R.apply_srip(model, 1.0)
    model.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    return model, srip, rng.randn(8, 6, 6, 3).astype("float32"), rng.randint(0, 4, 8)


def test_schedule_changes_loss_without_retracing():
    model, srip, x, y = model_with_srip()
    model.fit(x, y, epochs=1, verbose=0)
    traces = model.train_function.experimental_get_tracing_count()
    schedule = CB.CoefficientSchedule({0: 0.0, 1: 1.0, 2: 3.0}, log_as="srip_coefficient")
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[schedule]).history
    assert model.train_function.experimental_get_tracing_count() == traces
    assert history["srip_coefficient"] == [0.0, 1.0, 3.0]
    # SGD(0): weights are fixed, so loss = CE + coefficient * srip with one CE.
    ce = np.array(history["loss"]) - np.array(history["srip_coefficient"]) * np.array(history["srip"])
    np.testing.assert_allclose(ce, ce[0], rtol=1e-4)
    assert history["loss"][2] > history["loss"][1] > history["loss"][0]


def test_target_none_finds_the_models_regularizers():
    model, srip, x, y = model_with_srip()
    schedule = CB.CoefficientSchedule({0: 0.5})
    model.fit(x, y, epochs=1, verbose=0, callbacks=[schedule])
    assert float(srip.coefficient.numpy()) == 0.5
    inputs = keras.Input((3,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    plain.compile("sgd", "mse")
    with pytest.raises(ValueError, match="no orthogonality regularizer"):
        plain.fit(np.zeros((2, 3)), np.zeros((2, 2)), verbose=0,
                  callbacks=[CB.CoefficientSchedule({0: 0.5})])


def test_get_config_round_trip():
    for schedule in ("srip_paper", {0: 1.0, 5: 0.5}):
        callback = CB.CoefficientSchedule(schedule, base=0.01, log_as="c")
        clone = CB.CoefficientSchedule.from_config(callback.get_config())
        assert clone.get_config() == callback.get_config()
        assert [clone.value(e, 0.01) for e in range(8)] == [callback.value(e, 0.01) for e in range(8)]
    with pytest.raises(NotImplementedError, match="callable"):
        CB.CoefficientSchedule(lambda e: 1.0).get_config()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="unknown preset 'paper'"):
        CB.CoefficientSchedule("paper")
    with pytest.raises(ValueError, match="epochs >= 0"):
        CB.CoefficientSchedule({-1: 1.0})
    with pytest.raises(TypeError, match="coefficient"):
        CB.CoefficientSchedule({0: 1.0}, target=0.5)
