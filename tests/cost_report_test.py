"""CostReport totals/renderings, BASELINES, and the CostLogger callback."""
import csv
import json

import numpy as np
import pytest

from mntk.compat import keras
import mntk

L = keras.layers


def tiny_model():
    inputs = keras.Input((4,))
    x = L.Dense(3, activation="relu", name="h")(inputs)
    return keras.Model(inputs, L.Dense(2, name="out")(x))


def test_baselines_and_the_rules_example():
    cifar, imagenet = mntk.cost.BASELINES["cifar100"], mntk.cost.BASELINES["imagenet"]
    assert (cifar.params, cifar.ops, cifar.top1_target) == (36.5e6, 10.49e9, 0.80)
    assert (imagenet.params, imagenet.ops, imagenet.top1_target) == (6.9e6, 1170e6, 0.75)
    # The rules' example: 3M params + 500M ops on ImageNet = 3/6.9 + 500/1170.
    assert imagenet.score(3e6, 500e6) == pytest.approx(0.862, abs=5e-4)


def test_totals_are_sums_of_rows():
    report = mntk.cost.estimate(tiny_model(), task="imagenet")
    # h: 12 mults, (4 - 1) * 3 + 3 adds, 3 relu mults; out: 6 mults, 2 * 2 + 2 adds.
    assert (report.raw_mults, report.raw_adds) == (12 + 3 + 6, 12 + 6)
    assert report.param_bits == 32 * (15 + 8)
    assert report.params == 23
    assert report.ops == sum(r.ops for r in report.layers) == 21 + 18
    assert report.score == pytest.approx(23 / 6.9e6 + 39 / 1170e6)
    assert mntk.cost.estimate(tiny_model()).score is None


def test_unknown_task_is_an_error():
    with pytest.raises(ValueError, match="cifar100.*imagenet"):
        mntk.cost.estimate(tiny_model(), task="mnist")


def test_rows_have_the_agreed_fields():
    row = mntk.cost.estimate(tiny_model()).layers[0]
    assert (row.name, row.layer, row.kind, row.shape) == ("h", "h", "dense", (3,))
    assert (row.bits, row.sparsity) == (32.0, 0.0)
    assert row.param_bits == (4 * 3 + 3) * 32  # kernel and bias at 32 bits
    # Dense 4 -> 3: 4*3 mults, (4 - 1)*3 adds + 3 bias adds, all at 32 bits
    assert (row.mults, row.adds, row.ops) == (12, 12, 24)


def test_to_json_round_trips_through_json():
    report = mntk.cost.estimate(tiny_model(), task="cifar100")
    data = json.loads(json.dumps(report.to_json()))
    assert data["params"] == report.params and data["ops"] == report.ops
    assert data["score"] == pytest.approx(report.score)
    assert data["baseline"]["model"] == "WideResNet-28-10"
    assert [r["name"] for r in data["layers"]] == [r.name for r in report.layers]
    assert sum(r["ops"] for r in data["layers"]) == pytest.approx(report.ops)


def test_table_and_markdown_list_every_row():
    report = mntk.cost.estimate(tiny_model(), task="cifar100")
    table, markdown = report.table(), report.to_markdown()
    for row in report.layers:
        assert row.name in table and f"| {row.name} |" in markdown
    assert "score" in table and "params 23.0" in table
    assert markdown.splitlines()[1].startswith("|---|")


def test_progress_bar_only_for_large_models(capsys, monkeypatch):
    from mntk.cost import walker
    mntk.cost.estimate(tiny_model())
    assert "counting" not in capsys.readouterr().err
    monkeypatch.setattr(walker, "PROGRESS_MIN_LAYERS", 1)
    mntk.cost.estimate(tiny_model())
    assert "counting" in capsys.readouterr().err


def test_cost_logger_in_fit(tmp_path):
    model = tiny_model()
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    y = np.zeros((16, 2), "float32")
    path = tmp_path / "history.csv"
    logger = mntk.cost.CostLogger(task="cifar100")
    history = model.fit(x, y, epochs=2, verbose=0,
                        callbacks=[logger, keras.callbacks.CSVLogger(str(path))])
    expected = mntk.cost.estimate(model, task="cifar100")
    assert history.history["cost_params"] == [expected.params] * 2
    assert history.history["cost_ops"] == [expected.ops] * 2
    assert history.history["cost_score"][-1] == pytest.approx(expected.score)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["cost_ops"]) == expected.ops


def test_cost_logger_sees_pruning(tmp_path):
    model = tiny_model()
    model.compile("sgd", "mse")
    x = np.ones((4, 4), "float32")

    class ZeroHalf(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            kernel = self.model.get_layer("h").kernel
            kernel.assign(np.where(np.arange(12).reshape(4, 3) < 6, 0.0, kernel.numpy()))

    history = model.fit(x, np.zeros((4, 2)), epochs=1, verbose=0,
                        callbacks=[ZeroHalf(), mntk.cost.CostLogger()])
    # h keeps 6 of 12 weights (+ a 12-bit mask): (6 * 32 + 12) / 32 + 3 bias + 8.
    assert history.history["cost_params"] == [6 + 12 / 32 + 3 + 8]
    assert "cost_score" not in history.history


def test_cost_logger_every_and_config():
    logger = mntk.cost.CostLogger(task="imagenet", every=3, freebie=True)
    clone = mntk.cost.CostLogger.from_config(logger.get_config())
    assert clone.get_config() == logger.get_config() == {
        "task": "imagenet", "every": 3, "freebie": True, "input_shape": None}
    logger.set_model(tiny_model())
    counted = []
    original = logger._count
    logger._count = lambda: (counted.append(True), original())
    for epoch in range(6):
        logs = {}
        logger.on_epoch_end(epoch, logs)
        assert set(logs) == {"cost_params", "cost_ops", "cost_score"}
    assert len(counted) == 3          # epoch 0 (first), 2 and 5
    with pytest.raises(ValueError, match="every"):
        mntk.cost.CostLogger(every=0)
