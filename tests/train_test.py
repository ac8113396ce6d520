"""The recipe runner: overrides, resuming a killed run, strategies, summary."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mntk import train
from mntk.compat import keras


def small_config(**overrides):
    from recipes import digits
    c = digits.get_config()
    c.stages = ("train",)
    c.verbose = 0
    c.train.epochs = 3
    c.data.batch_size = 64
    c.tricks.srip.enabled = True
    c.tricks.adaptive_smoothing.enabled = True
    for key, value in overrides.items():
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        node[last] = value
    return c


class KillAfter(keras.callbacks.Callback):
    """Simulates a crash: raises after ``n`` training batches in all."""

    def __init__(self, n):
        super().__init__()
        self.n, self.seen = n, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt("killed by test")


def _weights(workdir):
    from mntk.serialization import load_model
    model = load_model(os.path.join(workdir, "stages", "0_train", "model.keras"))
    return model.get_weights()


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    config = small_config()
    steps = (1797 * 7 // 10) // 64  # training examples // batch
    straight = str(tmp_path / "straight")
    uninterrupted = train.run(config, straight)

    resumed = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        # dies in the middle of the third epoch, after two epochs were backed up
        train.run(config, resumed, extra_callbacks=[KillAfter(2 * steps + steps // 2)])
    assert train.saved_epoch(os.path.join(resumed, "stages", "0_train", "backup")) == 2
    assert not os.path.exists(os.path.join(resumed, "summary.json"))
    summary = train.run(config, resumed)

    for a, b in zip(_weights(straight), _weights(resumed)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with open(os.path.join(resumed, "stages", "0_train", "history.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + config.train.epochs
    assert summary["accuracy"] == uninterrupted["accuracy"]
    # the SRIP state outside the model was restored too: same logged values
    assert summary["history"]["srip"] == pytest.approx(uninterrupted["history"]["srip"], rel=1e-5)


def test_finished_stage_is_skipped_on_rerun(tmp_path, capsys):
    config = small_config(**{"train.epochs": 1})
    first = train.run(config, str(tmp_path))
    second = train.run(config, str(tmp_path))
    assert "already done" in capsys.readouterr().out
    assert first["accuracy"] == second["accuracy"]


def test_epoch_keyed_dataset_depends_only_on_epoch():
    x = np.arange(20, dtype=np.float32)[:, None]
    y = np.arange(20)
    whole = [b[1].numpy() for b in train.epoch_keyed_dataset(x, y, 5, 7, 0, 3)]
    tail = [b[1].numpy() for b in train.epoch_keyed_dataset(x, y, 5, 7, 2, 3)]
    assert len(whole) == 12 and len(tail) == 4
    for a, b in zip(whole[8:], tail):
        np.testing.assert_array_equal(a, b)
    # each epoch is a permutation of all examples, and epochs differ
    epochs = [np.sort(np.concatenate(whole[4 * e: 4 * e + 4])) for e in range(3)]
    for e in epochs:
        np.testing.assert_array_equal(e, y)
    assert not np.array_equal(np.concatenate(whole[:4]), np.concatenate(whole[4:8]))


def test_mirrored_strategy_two_replicas_trains(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    config = small_config(**{"strategy": "mirrored", "train.epochs": 1,
                             "train.max_steps_per_epoch": 3})
    strategy = train.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    summary = train.run(config, str(tmp_path))
    history = summary["history"]
    assert np.isfinite(history["loss"][0])


def test_unknown_stage_and_strategy_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Unknown stage"):
        train.run(small_config(stages=("train", "bogus")), str(tmp_path))
    with pytest.raises(ValueError, match="Unknown strategy 'warp'"):
        train.make_strategy("warp")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        os.environ.pop("TF_CONFIG", None)
        train.make_strategy("multi_worker")


def test_nan_loss_stops_with_a_clear_message(tmp_path):
    config = small_config(**{"train.learning_rate": 1e9, "train.epochs": 2,
                             "train.optimizer": "sgd",
                             "tricks.srip.enabled": False,
                             "tricks.adaptive_smoothing.enabled": False})
    with pytest.raises(ValueError, match="NaN"):
        train.run(config, str(tmp_path))


def test_summary_json_is_written(tmp_path):
    config = small_config(**{"train.epochs": 1})
    summary = train.run(config, str(tmp_path))
    with open(tmp_path / "summary.json") as f:
        on_disk = json.load(f)
    assert on_disk["accuracy"] == pytest.approx(summary["accuracy"])
    assert on_disk["tricks"]["srip"]["layers"] == "pointwise"
    assert on_disk["tricks"]["adaptive_smoothing"]["epsilon"] == pytest.approx(0.3)
    assert os.path.exists(tmp_path / "model.keras")
