"""Staged TFLite export of early-exit models and StagedRunner (LiteRT)."""
import json
import os

import numpy as np
import pytest

from mntk import export
from mntk.early_exit import EarlyExitRunner, calibrate
from _marks import fast_first


@pytest.fixture(scope="module")
def setup(trained_multi_exit, digits_split):
    (x_train, _), (x, y) = digits_split
    cal = calibrate(trained_multi_exit, (x, y), exit_rate=0.5)
    return trained_multi_exit, cal, x, y, x_train[:300]


def test_float_staged_equals_keras_runner(setup, tmp_path):
    multi, cal, x, _, _ = setup
    manifest = export.to_tflite_staged(multi, cal, str(tmp_path), progress=False)
    with open(tmp_path / "manifest.json") as f:
        assert json.load(f) == manifest
    assert [s["file"] for s in manifest["stages"]] == [
        "stage_0.tflite", "stage_1.tflite", "stage_2.tflite"]
    assert manifest["stages"][1]["next_inputs"] == [["in", 0], ["out", 0]]
    assert manifest["thresholds"] == cal.thresholds
    assert all(os.path.getsize(tmp_path / s["file"]) == s["bytes"]
               for s in manifest["stages"])
    keras_logits, keras_exits = EarlyExitRunner(multi, cal).predict(x)
    runner = export.StagedRunner(str(tmp_path))
    logits, exits = runner.predict(x)
    np.testing.assert_array_equal(exits, keras_exits)
    np.testing.assert_allclose(logits, keras_logits, rtol=1e-4, atol=1e-4)
    assert runner.exit_histogram.sum() == len(x)
    assert 0 < runner.exit_rates[0] + runner.exit_rates[1] < 1
    assert len(runner.latencies_ms) == len(x)


@pytest.mark.slow
def test_int8_staged_agrees(setup, tmp_path):
    multi, cal, x, y, representative = setup
    export.to_tflite_staged(multi, cal, str(tmp_path), quantize="int8",
                            representative_data=representative, progress=False)
    keras_logits, keras_exits = EarlyExitRunner(multi, cal).predict(x)
    logits, exits = export.StagedRunner(str(tmp_path)).predict(x)
    agreement = np.mean(logits.argmax(-1) == keras_logits.argmax(-1))
    assert agreement >= 0.99, agreement
    assert np.mean(exits == keras_exits) >= 0.95


@pytest.mark.slow
def test_single_file_multi_output_tflite(setup, tmp_path):
    multi, _, x, y, _ = setup
    result = export.to_tflite(multi, str(tmp_path / "all_exits.tflite"),
                              progress=False)
    parity = export.verify(result.path, multi, (x, y))
    assert [o.name for o in parity.outputs] == multi.output_names
    for output in parity.outputs:
        assert output.agreement == 1.0
        assert output.max_abs_diff < 1e-4


def test_errors(setup, tmp_path):
    multi, _, _, _, _ = setup
    with pytest.raises(ValueError, match="Got 1 thresholds for a model with 2"):
        export.to_tflite_staged(multi, [0.5], str(tmp_path))
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        export.StagedRunner(str(tmp_path / "nothing"))


def _reference(outputs, thresholds, fallback):
    """First exit whose max softmax >= its threshold; else the final output,
    or with SDN's fallback the most confident head (first on ties)."""
    conf = []
    for o in outputs:
        z = o - o.max(-1, keepdims=True)
        conf.append(1.0 / np.exp(z).sum(-1))  # max softmax = 1 / sum exp(z - max)
    conf = np.stack(conf)
    n, last = conf.shape[1], len(outputs) - 1
    stop = np.full(n, last)
    for i in reversed(range(last)):
        stop[conf[i] >= thresholds[i]] = i
    answer = stop.copy()
    if fallback == "most_confident":
        answer = np.where(stop == last, conf.argmax(0), stop)
    return stop, answer


@pytest.mark.parametrize("fallback", fast_first(["final", "most_confident"]))
def test_batched_runner_equals_per_sample(setup, tmp_path, fallback):
    multi, cal, x, _, _ = setup
    dense = [np.asarray(o) for o in multi.predict(x[:150], verbose=0)]
    # Per-exit thresholds from the heads' own confidences: ~20% leave at exit
    # 0, a further share at exit 1, about half run to the end.
    conf = [1.0 / np.exp(o - o.max(-1, keepdims=True)).sum(-1) for o in dense]
    thresholds = [float(np.quantile(conf[0], 0.8)), float(np.quantile(conf[1], 0.7))]
    export.to_tflite_staged(multi, thresholds, str(tmp_path), fallback=fallback,
                            progress=False)
    runner = export.StagedRunner(str(tmp_path), num_threads=1)
    assert runner.fallback == fallback
    one_logits, one_exits = runner.predict(x[:150], batch_size=1)
    one_answers = runner.answer_index.copy()
    for batch_size in (37, 64, 1000):
        logits, exits = runner.predict(x[:150], batch_size=batch_size)
        np.testing.assert_array_equal(exits, one_exits)
        np.testing.assert_array_equal(runner.answer_index, one_answers)
        np.testing.assert_allclose(logits, one_logits, rtol=1e-5, atol=1e-5)
        assert len(runner.latencies_ms) == 150
    stop, answer = _reference(dense, thresholds, fallback)
    np.testing.assert_array_equal(one_exits, stop)
    np.testing.assert_array_equal(one_answers, answer)
    np.testing.assert_allclose(one_logits, np.stack(dense)[answer, np.arange(150)],
                               rtol=1e-4, atol=1e-4)
    if fallback == "most_confident":
        assert np.any(answer != stop)  # the fallback did change some answers
    keras_runner = EarlyExitRunner(multi, thresholds, fallback=fallback)
    keras_logits, keras_exits = keras_runner.predict(x[:150], batch_size=64)
    np.testing.assert_array_equal(keras_exits, stop)
    np.testing.assert_array_equal(keras_runner.answer_index, answer)
    np.testing.assert_allclose(keras_logits, one_logits, rtol=1e-4, atol=1e-4)


def test_powers_of_two_decomposition():
    from mntk.export.staged_runner import _powers_of_two
    for m in (1, 2, 37, 64, 255, 1000):
        parts = _powers_of_two(m)
        assert sum(parts) == m and parts == sorted(parts, reverse=True)
        assert all(p & (p - 1) == 0 for p in parts) and len(set(parts)) == len(parts)
