"""The recipe runner: every stage module on digits, resuming a killed run,
strategies, the summary schema on disk."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import _runs
from mntk import train
from mntk.train.summary import RunSummary, StageSummary


@pytest.fixture
def all_stages(tmp_path_factory):
    return _runs.all_stages(tmp_path_factory)


@pytest.mark.xdist_group("all_stages")  # one shared run per worker
def test_every_stage_module_runs_and_writes_its_summary(all_stages):
    config, workdir, summary = all_stages
    assert [s.name for s in summary.stages] == list(_runs.ALL_STAGES)
    for k, name in enumerate(_runs.ALL_STAGES):
        with open(os.path.join(_runs.stage_dir(workdir, k, name), "summary.json")) as f:
            on_disk = StageSummary.from_dict(json.load(f))
        assert on_disk == summary.stages[k]
    # train: SRIP and adaptive smoothing as the recipe says, two epochs logged
    assert summary.tricks["srip"]["layers"] == "pointwise"
    assert summary.tricks["adaptive_smoothing"]["epsilon"] == pytest.approx(0.3)
    assert len(summary.history["srip"]) == config.train.epochs
    # export: both TFLite files exist with the size the summary gives
    for kind, figures in summary.tflite.items():
        assert os.path.getsize(os.path.join(workdir, figures.path)) == figures.bytes > 0
    # early exit: every test example leaves at exactly one exit
    e = summary.early_exit
    assert sum(e.exit_rates) == pytest.approx(1.0) and len(e.exit_rates) == 2
    assert e.mean_ops <= e.backbone_ops
    # prune: the polynomial schedule ends at the target on every pruned kernel
    pruning = summary.stages[3].pruning
    pruned = [v for v in pruning.sparsity.values() if v > 0]
    assert pruned and max(abs(v - 0.5) for v in pruned) < 0.02
    # ... and its float TFLite file is sparse-encoded and equal to Keras
    pruned_file = pruning.tflite
    assert pruned_file.sparse and pruned_file.sparse_note is None
    assert os.path.getsize(os.path.join(workdir, pruned_file.path)) == pruned_file.bytes
    assert pruned_file.agreement == 1.0
    # quantize -> finetune: ternary kernels (at most 2 bits a weight) stay ternary
    quantized = summary.stages[4].quantization
    finetuned = summary.stages[5].quantization
    assert quantized.scheme == finetuned.scheme == "ternary"
    assert quantized.mean_weight_bits <= 2.0 and not quantized.distillation
    assert finetuned.frozen_bit_widths == 0      # no learned bit widths to freeze
    assert finetuned.mean_weight_bits == pytest.approx(quantized.mean_weight_bits)
    assert summary.quantization == finetuned
    for figures in (quantized, finetuned):
        assert os.path.getsize(os.path.join(workdir, figures.tflite.path)) == \
            figures.tflite.bytes > 0
    # prune_exits (last): the early_exit stage's exit head pruned to 50% by
    # one global threshold, nothing else pruned, the exits evaluated again
    heads = summary.stages[6]
    assert summary.pruning == heads.pruning and summary.early_exit == heads.early_exit
    assert heads.pruning.sparsity["global"] == pytest.approx(0.5, abs=0.02)
    head_layers = [name for name in heads.pruning.sparsity if name != "global"]
    assert head_layers and all(name.startswith("exit_0") for name in head_layers)
    assert sum(heads.early_exit.exit_rates) == pytest.approx(1.0)
    # the final model is the QAT model, saved as .h5
    assert os.path.exists(os.path.join(workdir, "model.h5"))
    # each stage saves the model it ended with: finetune trains the QAT model
    # in place, and its file is no copy of the quantize stage's
    import filecmp
    assert not filecmp.cmp(os.path.join(_runs.stage_dir(workdir, 4, "quantize"), "model.h5"),
                           os.path.join(_runs.stage_dir(workdir, 5, "finetune"), "model.h5"),
                           shallow=False)


@pytest.mark.xdist_group("all_stages")  # one shared run per worker
def test_summary_json_round_trips_through_the_schema(all_stages):
    _, workdir, summary = all_stages
    with open(os.path.join(workdir, "summary.json")) as f:
        on_disk = json.load(f)
    assert RunSummary.from_dict(on_disk) == summary
    assert on_disk["dataset"] == "digits" and on_disk["recipe"] == "digits"
    on_disk["stages"][0]["acuracy"] = 0.5
    with pytest.raises(ValueError, match="acuracy"):
        RunSummary.from_dict(on_disk)


@pytest.mark.xdist_group("all_stages")  # one shared run per worker
def test_finished_stages_are_skipped_on_rerun(all_stages, capsys):
    config, workdir, summary = all_stages
    again = train.run(config, workdir)
    out = capsys.readouterr().out
    assert out.count("already done") == len(_runs.ALL_STAGES)
    assert again.stages == summary.stages


@pytest.mark.xdist_group("qat8_prune")  # the run the slow kill chain shares
def test_qat8_then_global_pruning(tmp_path_factory):
    """Stage ``qat8`` from an ``init_from`` float model, then ``prune`` by one
    global threshold at 30% then 60%: the int8 file agrees with the QAT
    model, the 8-bit ranges are written, and 60% of the pruned kernels'
    weights are zero in the saved model (counted here with numpy)."""
    from mntk.serialization import load_model
    config, workdir, _, summary = _runs.qat8_prune(tmp_path_factory)
    assert [s.name for s in summary.stages] == ["qat8", "prune"]
    qat8 = summary.stages[0].quantization
    # four steps from random weights: near-tied logits (accuracy near 10%), so
    # the int8 file is judged by its logits (within 0.1; a wrong range or BN
    # fold is off by whole units) more than by its top-1 agreement
    assert qat8.scheme == "int8" and qat8.tflite.agreement >= 0.9
    assert qat8.tflite.max_abs_diff <= 0.1
    with open(os.path.join(_runs.stage_dir(workdir, 0, "qat8"),
                           "quantizer_ranges.json")) as f:
        ranges = json.load(f)
    assert ranges and all(np.all(np.asarray(lo) < np.asarray(hi))
                          for lo, hi in (r if isinstance(r, list) else (r["min"], r["max"])
                                         for r in ranges.values()))
    pruning = summary.stages[1].pruning
    assert pruning.target == pytest.approx(0.6)
    model = load_model(os.path.join(_runs.stage_dir(workdir, 1, "prune"), "model.keras"),
                       compile=False)
    weights = {w.name: w.numpy() for w in model.weights}
    kernels = [weights[name] for name in pruning.sparsity if name != "global"]
    assert len(kernels) >= 5
    zeros = sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels)
    assert zeros == pytest.approx(0.6, abs=0.01)
    assert pruning.sparsity["global"] == pytest.approx(zeros, abs=1e-6)


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


@pytest.mark.slow
def test_mirrored_strategy_two_replicas_trains(tmp_path):
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    config = _runs.digits_config(**{"stages": ("train",), "strategy": "mirrored",
                                    "train.epochs": 1, "train.max_steps_per_epoch": 3})
    strategy = train.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    summary = train.run(config, str(tmp_path))
    assert np.isfinite(summary.history["loss"][0])


def test_unknown_stage_and_strategy_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown stage"):
        train.run(_runs.digits_config(stages=("train", "bogus")), str(tmp_path))
    with pytest.raises(ValueError, match="Unknown strategy 'warp'"):
        train.make_strategy("warp")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        train.make_strategy("multi_worker")


@pytest.mark.slow
def test_nan_loss_stops_with_a_clear_message(tmp_path):
    config = _runs.digits_config(**{
        "stages": ("train",), "train.learning_rate": 1e9, "train.epochs": 2,
        "train.max_steps_per_epoch": 4, "train.optimizer": "sgd",
        "tricks.srip.enabled": False, "tricks.adaptive_smoothing.enabled": False,
        "run_eagerly": True})
    with pytest.raises(ValueError, match=r"stage 'train' diverged at epoch 0: \w+ is nan"):
        train.run(config, str(tmp_path))
    # the lock is released and the diverged stage is not marked done
    assert not os.path.exists(tmp_path / ".lock")
    assert not os.path.exists(tmp_path / "stages" / "0_train" / "summary.json")


@pytest.mark.slow
def test_rerun_with_another_config_needs_force_or_restart_from(tmp_path, capsys):
    # five short runs: eager steps (tracing cost more than their two steps)
    config = _runs.digits_config(**{"stages": ("train",), "train.epochs": 1,
                                    "train.max_steps_per_epoch": 2, "data.image_size": 8,
                                    "run_eagerly": True})
    first = train.run(config, str(tmp_path))
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["learning_rate"] == config.train.learning_rate
    config.verbose = 1          # output-only: no objection
    train.run(config, str(tmp_path))
    config.train.learning_rate = 0.5
    with pytest.raises(ValueError, match="train.learning_rate was 0.003, now 0.5"):
        train.run(config, str(tmp_path))
    forced = train.run(config, str(tmp_path), force=True)   # finished stage kept as it is
    assert forced.stages == first.stages
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["train"]["learning_rate"] == 0.5
    capsys.readouterr()
    redone = train.run(config, str(tmp_path), restart_from="train")
    assert "already done" not in capsys.readouterr().out
    assert redone.stages[0].history["loss"] != first.stages[0].history["loss"]


@pytest.mark.parametrize("case", ["multi_exit_named_metric", "distillation_function_metric"])
def test_compiled_metrics_built_before_the_fit_trace_the_step_once(case):
    """Keras' own behaviour, the reference: a multi-exit model's per-output
    loss means and a metric given by name or as a function are created in
    the first traced train step, so the step is traced twice. After
    ``build_compiled_metrics`` (what the runner's fit calls), once. (The
    optimizer is built first, as BackupAndRestore does in the runner.)"""
    from _models import residual_backbone, small_cnn
    from mntk import early_exit, losses
    from mntk.compat import keras
    from mntk.train.fit import build_compiled_metrics
    from mntk.train.objectives import first_column_accuracy
    rng = np.random.default_rng(0)
    x = rng.random((16, 8, 8, 1), np.float32)
    y = rng.integers(0, 10, 16)
    counts = []
    for build in (False, True):
        keras.backend.clear_session()
        with train.make_strategy("default").scope():
            if case == "multi_exit_named_metric":
                model = early_exit.add_exits(residual_backbone(), at=["block1_out"], head="linear")
                early_exit.compile_exits(model, keras.optimizers.Adam(1e-3))
                labels = (y,) * 2
            else:
                model = small_cnn()
                model.compile(keras.optimizers.Adam(1e-3), losses.Distillation(),
                              metrics=[first_column_accuracy])
                labels = np.concatenate([y[:, None], rng.random((16, 10))], 1).astype(np.float32)
        data = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)
        # as the runner's BackupAndRestore does at the start of a fit
        model.optimizer.build(model.trainable_variables)
        if build:
            build_compiled_metrics(model, data.element_spec[1])
        model.fit(data, epochs=1, verbose=0)
        counts.append(model.train_function.experimental_get_tracing_count())
        assert np.isfinite(model.history.history["loss"][0])
    assert counts == [2, 1], counts
