"""Distillation (Hinton et al. 2015) against a numpy reference."""
import numpy as np
import pytest

import mntk
from mntk.compat import keras


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference(labels, teacher, student, temperature, alpha):
    """(1 - a) CE(y, s) + a T^2 KL(softmax(t/T) || softmax(s/T)), batch mean."""
    ce = -_log_softmax(student)[np.arange(len(labels)), labels]
    p = np.exp(_log_softmax(teacher / temperature))
    kl = (p * (np.log(p) - _log_softmax(student / temperature))).sum(-1)
    return np.mean((1 - alpha) * ce + alpha * temperature ** 2 * kl)


@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.0), (4.0, 0.5), (2.0, 1.0)])
def test_matches_numpy(temperature, alpha):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 8)
    teacher, student = rng.normal(size=(2, 8, 5)).astype("float32") * 3
    loss = mntk.losses.Distillation(temperature=temperature, alpha=alpha)
    y_true = np.concatenate([labels[:, None].astype("float32"), teacher], 1)
    got = float(loss(y_true, student))
    np.testing.assert_allclose(
        got, _reference(labels, teacher, student, temperature, alpha), rtol=1e-5)


def test_targets_carry_teacher_logits_through_fit_and_evaluate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 4)).astype("float32")
    y = rng.integers(0, 3, 16)
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    loss = mntk.losses.Distillation(teacher, temperature=3.0, alpha=0.7)
    targets = loss.targets(x, y)
    np.testing.assert_array_equal(targets[:, 0], y)
    np.testing.assert_allclose(targets[:, 1:], teacher(x).numpy(), rtol=1e-6)
    student.compile("sgd", loss=loss)
    got = student.evaluate(x, targets, batch_size=16, verbose=0)
    expected = _reference(y, teacher(x).numpy(), student(x).numpy(), 3.0, 0.7)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # a teacher that agrees with the student leaves only the label term
    student.set_weights(teacher.get_weights())
    same = student.evaluate(x, targets, batch_size=16, verbose=0)
    ce = -_log_softmax(teacher(x).numpy())[np.arange(16), y].mean()
    np.testing.assert_allclose(same, 0.3 * ce, rtol=1e-4)


def test_alpha_out_of_range_is_refused():
    with pytest.raises(ValueError, match="alpha=1.5 must be in"):
        mntk.losses.Distillation(alpha=1.5)
