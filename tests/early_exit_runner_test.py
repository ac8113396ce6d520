"""EarlyExitRunner: per-sample exit equal to the dense multi-output model."""
import numpy as np
import pytest

import mntk
from mntk.early_exit.graph import route
from mntk.early_exit import EarlyExitRunner, build_segments, calibrate, exit_indices
from _marks import fast_first


@pytest.fixture
def trained(trained_multi_exit, digits_split):
    """The session's two-exit model: its exit at ``block2_inner`` sits inside a
    residual block, so the skip tensor ``block1_out`` crosses that cut."""
    return trained_multi_exit, digits_split[1]


def test_segments_cover_the_skip_connection(trained):
    multi, (x, _) = trained
    segments, structure = build_segments(multi)
    # Exit at block2_inner: the skip tensor block1_out crosses that cut too.
    assert [[t.shape[-1] for t in b] for b in structure.boundaries] == [
        [1], [16], [16, 16]]
    dense = multi.predict(x[:20], verbose=0)
    e0, f0 = segments[0].predict(x[:20], verbose=0)
    e1, f1 = segments[1].predict(f0, verbose=0)
    # block1_out skips over segment 1: passed on from its input.
    assert structure.routes[1] == [("in", 0), ("out", 0)]
    final = segments[2].predict(route(structure.routes[1], [f0], [f1]), verbose=0)
    for got, want in zip((e0, e1, final), dense):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Segments share the multi-exit model's layers.
    assert segments[2].get_layer("logits") is multi.get_layer("logits")


@pytest.mark.parametrize("criterion", fast_first(["max_softmax", "entropy"]))
@pytest.mark.parametrize("batch_size", fast_first([64, 1, 1000]))
def test_runner_equals_dense_choice(trained, criterion, batch_size):
    multi, data = trained
    cal = calibrate(multi, data, criterion=criterion, exit_rate=0.5)
    runner = EarlyExitRunner(multi, cal)
    x = data[0][:50] if batch_size == 1 else data[0]
    logits, exits = runner.predict(x, batch_size=batch_size)
    dense = [np.asarray(o) for o in multi.predict(x, verbose=0)]
    expected = exit_indices(dense[:-1], cal.thresholds, criterion)
    np.testing.assert_array_equal(exits, expected)
    chosen = np.stack(dense)[expected, np.arange(len(x))]
    np.testing.assert_allclose(logits, chosen, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(runner.exit_histogram,
                                  np.bincount(expected, minlength=3))
    assert len(runner.latencies_ms) == len(x)
    stats = runner.latency_stats()
    lat = runner.latencies_ms
    np.testing.assert_allclose([stats.mean_ms, stats.p50_ms, stats.p90_ms, stats.p99_ms],
                               [lat.mean(), *np.percentile(lat, [50, 90, 99])])
    for i, mean in enumerate(stats.per_exit_mean_ms):
        taken = lat[exits == i]
        assert mean == (pytest.approx(taken.mean()) if len(taken) else None)


def test_measured_rates_feed_mean_cost(trained):
    multi, data = trained
    runner = EarlyExitRunner(multi, calibrate(multi, data, exit_rate=0.4))
    runner.predict(data[0])
    report = runner.mean_cost()
    exit_ops = mntk.cost.estimate(multi).exit_ops
    np.testing.assert_allclose(report.ops, np.dot(runner.exit_rates, exit_ops))


def test_extreme_thresholds(trained):
    multi, (x, _) = trained
    _, exits = EarlyExitRunner(multi, [-1.0, -1.0]).predict(x[:30])
    assert np.all(exits == 0)
    _, exits = EarlyExitRunner(multi, [float("inf")] * 2).predict(x[:30])
    assert np.all(exits == 2)


def test_threshold_errors(trained):
    multi, _ = trained
    with pytest.raises(ValueError, match="Got 1 thresholds for a model with 2"):
        EarlyExitRunner(multi, [0.5])
    with pytest.raises(ValueError, match="one threshold per exit"):
        EarlyExitRunner(multi, 0.5)
    with pytest.raises(ValueError, match="Unknown exit criterion"):
        EarlyExitRunner(multi, [0.5, 0.5], criterion="margin")
