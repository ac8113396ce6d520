"""calibrate: exit rule, targets, curve, JSON; on a small digits model."""
import numpy as np
import pytest

import mntk
from mntk.compat import keras
from mntk.early_exit import Calibration, calibrate, confidence, evaluate, exit_indices
from _marks import fast_first


@pytest.fixture
def trained(trained_multi_exit, digits_split):
    """The session's two-exit digits model and the held-out split to calibrate on."""
    return trained_multi_exit, digits_split[1]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_confidence_numpy_reference():
    z = np.random.RandomState(0).randn(6, 5) * 3
    p = softmax(z)
    np.testing.assert_allclose(confidence(z, "max_softmax"), p.max(-1))
    np.testing.assert_allclose(confidence(z, "entropy"),
                               -(p * np.log(p)).sum(-1), rtol=1e-10)


@pytest.mark.parametrize("criterion", ["max_softmax", "entropy"])
def test_exit_rule_first_passing_exit(criterion):
    rng = np.random.RandomState(1)
    exits = [rng.randn(50, 4) * 3, rng.randn(50, 4) * 3]
    thresholds = [0.7, 0.5] if criterion == "max_softmax" else [0.6, 0.9]
    got = exit_indices(exits, thresholds, criterion)
    for n in range(50):
        expected = 2
        for i in range(2):
            p = softmax(exits[i][n])
            passed = (p.max() >= thresholds[i] if criterion == "max_softmax"
                      else -(p * np.log(p)).sum() <= thresholds[i])
            if passed:
                expected = i
                break
        assert got[n] == expected


@pytest.mark.parametrize("criterion", fast_first(["max_softmax", "entropy"]))
@pytest.mark.parametrize("rate", fast_first([0.3, 0.1, 0.6]))
def test_exit_rate_hit_within_one_point(trained, criterion, rate):
    multi, data = trained
    cal = calibrate(multi, data, criterion=criterion, exit_rate=rate)
    assert abs(cal.exit_rate - rate) <= 0.01
    np.testing.assert_allclose(sum(cal.exit_rates), 1.0)
    # The reported numbers are what the thresholds do on the same data.
    outputs = [np.asarray(o) for o in multi.predict(data[0], verbose=0)]
    again = evaluate(outputs, data[1], cal.thresholds, criterion, cal.exit_ops)
    np.testing.assert_allclose(again["exit_rates"], cal.exit_rates)
    np.testing.assert_allclose(again["accuracy"], cal.accuracy)
    np.testing.assert_allclose(cal.mean_ops, np.dot(cal.exit_rates, cal.exit_ops))
    np.testing.assert_allclose(cal.final_accuracy,
                               np.mean(outputs[-1].argmax(-1) == data[1]))


@pytest.mark.parametrize("drop", [0.0, 0.02])
def test_max_accuracy_drop_respected_and_cheapest(trained, drop):
    multi, data = trained
    cal = calibrate(multi, data, max_accuracy_drop=drop, curve=True)
    assert cal.accuracy >= cal.final_accuracy - drop - 1e-12
    feasible = [p["mean_ops"] for p in cal.curve
                if p["accuracy"] >= cal.final_accuracy - drop - 1e-12]
    assert cal.mean_ops == pytest.approx(min(feasible))


def test_mean_ops_budget(trained):
    multi, data = trained
    exit_ops = mntk.cost.estimate(multi).exit_ops
    budget = 0.5 * (exit_ops[1] + exit_ops[2])
    cal = calibrate(multi, data, mean_ops=budget, curve=True)
    assert cal.mean_ops <= budget
    best = max(p["accuracy"] for p in cal.curve if p["mean_ops"] <= budget)
    assert cal.accuracy == pytest.approx(best)
    # ops_saved is against the backbone alone (heads excluded).
    backbone = keras.Model(multi.inputs, multi.outputs[-1])
    baseline = mntk.cost.estimate(backbone).ops
    assert cal.ops_saved == pytest.approx(1 - cal.mean_ops / baseline)
    with pytest.raises(ValueError, match="cheapest"):
        calibrate(multi, data, mean_ops=1.0)


def test_curve_is_monotone_in_exit_rate(trained):
    multi, data = trained
    cal = calibrate(multi, data, exit_rate=0.5, curve=True)
    rates = [p["exit_rate"] for p in cal.curve]
    assert rates[0] == 1.0 and rates[-1] == 0.0
    assert np.all(np.diff(rates) <= 0)


def test_json_round_trip(trained, tmp_path):
    multi, data = trained
    cal = calibrate(multi, data, exit_rate=0.0)
    assert cal.exit_rate == 0.0 and cal.accuracy == cal.final_accuracy
    path = tmp_path / "calibration.json"
    cal.to_json(path)
    assert Calibration.from_json(str(path)) == cal
    assert Calibration.from_json(cal.to_json()) == cal


def test_dataset_input_matches_arrays(trained):
    import tensorflow as tf
    multi, (x, y) = trained
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(50)
    a = calibrate(multi, ds, exit_rate=0.4, verbose=True)
    b = calibrate(multi, (x, y), exit_rate=0.4)
    assert a.thresholds == pytest.approx(b.thresholds)


def test_target_errors(trained):
    multi, data = trained
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(multi, data)
    with pytest.raises(ValueError, match="exactly one target"):
        calibrate(multi, data, exit_rate=0.3, mean_ops=10.0)
    with pytest.raises(ValueError, match="Unknown exit criterion"):
        calibrate(multi, data, criterion="margin", exit_rate=0.3)
    with pytest.raises(ValueError, match="Got 1 thresholds for 2 exits"):
        exit_indices([np.zeros((2, 3))] * 2, [0.5], "max_softmax")


def _numpy_outcome(outputs, labels, thresholds, exit_ops, fallback):
    """Exit rule and SDN fallback written out in numpy, from the outputs."""
    conf = np.stack([softmax(o).max(-1) for o in outputs])
    last = len(outputs) - 1
    stop = np.full(len(labels), last)
    for i in reversed(range(last)):
        stop[conf[i] >= thresholds[i]] = i
    answer = np.where(stop == last, conf.argmax(0), stop) \
        if fallback == "most_confident" else stop
    preds = np.stack([o.argmax(-1) for o in outputs])[answer, np.arange(len(labels))]
    rates = np.bincount(stop, minlength=len(outputs)) / len(labels)
    return float(np.mean(preds == labels)), rates, float(rates @ np.asarray(exit_ops))


@pytest.mark.slow
@pytest.mark.parametrize("fallback", ["final", "most_confident"])
def test_per_exit_thresholds_at_least_as_good_as_shared(trained, fallback):
    multi, data = trained
    outputs = [np.asarray(o) for o in multi.predict(data[0], verbose=0)]
    for target in ({"exit_rate": 0.5}, {"max_accuracy_drop": 0.01}):
        shared = calibrate(multi, data, fallback=fallback, **target)
        joint = calibrate(multi, data, fallback=fallback, per_exit=True, **target)
        assert joint.fallback == fallback and len(joint.thresholds) == 2
        acc, rates, ops = _numpy_outcome(outputs, data[1], joint.thresholds,
                                         joint.exit_ops, fallback)
        assert joint.accuracy == pytest.approx(acc)
        np.testing.assert_allclose(joint.exit_rates, rates)
        assert joint.mean_ops == pytest.approx(ops)
        if "exit_rate" in target:
            assert abs(joint.exit_rate - 0.5) <= 0.01 + 1e-9
            assert joint.accuracy >= shared.accuracy
        else:
            assert joint.accuracy >= joint.final_accuracy - 0.01 - 1e-12
            assert joint.mean_ops <= shared.mean_ops + 1e-9
        shared_acc, _, _ = _numpy_outcome(outputs, data[1], shared.thresholds,
                                          shared.exit_ops, fallback)
        assert shared.accuracy == pytest.approx(shared_acc)
    with pytest.raises(ValueError, match="fallback"):
        calibrate(multi, data, exit_rate=0.5, fallback="best")
