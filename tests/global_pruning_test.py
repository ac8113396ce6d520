"""mntk.global_pruning: one threshold over all layers, the L2-normalized variant,
stages with rewinding, masks that stay zero through fit, interop and resume."""
import numpy as np
import pytest
import tensorflow as tf

import mntk
from mntk.compat import keras
from mntk.global_pruning import GlobalPruning, global_masks, prunable_weights
from _quantization_helpers import tiny_model

KERNELS = ("stem", "dw", "pw", "fc", "logits")


def _compiled(model, momentum=0.9):
    model.compile(keras.optimizers.SGD(0.05, momentum=momentum),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 8, 8, 1)).astype("float32"),
            rng.integers(0, 10, size=n))


def _kernels(model):
    return {name: model.get_layer(name).get_weights()[0] for name in KERNELS}


def _reference_masks(kernels, rate, normalize=None):
    """The entries' rule written out: scores, one percentile, strict >."""
    scores = {}
    for name, w in kernels.items():
        s = np.abs(w.astype(np.float64))
        if normalize == "l2":
            s = s / np.sqrt((s ** 2).sum())
        scores[name] = s
    t = np.percentile(np.concatenate([s.ravel() for s in scores.values()]), 100 * rate)
    return {name: s > t for name, s in scores.items()}


def test_prunable_weights_are_every_kernel_of_rank_two_or_more():
    names = [layer for layer, _ in prunable_weights(tiny_model())]
    assert names == list(KERNELS)
    assert [l for l, _ in prunable_weights(tiny_model(), layers=["pw", "fc"])] == ["pw", "fc"]
    with pytest.raises(ValueError, match="nope"):
        prunable_weights(tiny_model(), layers=["nope"])


def test_one_threshold_across_layers():
    model = tiny_model()
    # a layer of large weights: a per-layer rule would prune it as much as the
    # others, the global rule barely touches it
    pw = model.get_layer("pw")
    pw.set_weights([pw.get_weights()[0] * 20.0, pw.get_weights()[1]])
    before = _kernels(model)
    gp = GlobalPruning(model)
    gp.prune(0.5)
    after = _kernels(model)
    expected = _reference_masks(before, 0.5)
    for name in KERNELS:
        np.testing.assert_array_equal(after[name], before[name] * expected[name], err_msg=name)
    total = sum(w.size for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros / total == pytest.approx(0.5, abs=1.0 / total)
    assert gp.sparsity()["global"] == pytest.approx(zeros / total)
    assert np.mean(after["pw"] == 0) < 0.05
    assert np.mean(after["fc"] == 0) > 0.5
    # biases and BatchNorm are never pruned
    assert np.all(model.get_layer("stem_bn").get_weights()[0] != 0)


def test_layer_normalized_variant():
    model = tiny_model()
    pw = model.get_layer("pw")
    pw.set_weights([pw.get_weights()[0] * 20.0, pw.get_weights()[1]])
    before = _kernels(model)
    GlobalPruning(model, normalize="l2").prune(0.6)
    after = _kernels(model)
    expected = _reference_masks(before, 0.6, normalize="l2")
    for name in KERNELS:
        np.testing.assert_array_equal(after[name] != 0, expected[name], err_msg=name)
    # scaling a layer no longer protects it: its rate is unchanged by the x20
    plain = global_masks([before["pw"] / 20.0] + [before[n] for n in KERNELS if n != "pw"],
                         0.6, normalize="l2")
    np.testing.assert_array_equal(plain[0] > 0, expected["pw"])
    # and it differs from the raw-magnitude masks
    raw = _reference_masks(before, 0.6)
    assert any((raw[n] != expected[n]).any() for n in KERNELS)


@pytest.mark.slow
def test_masks_stay_zero_through_fit():
    x, y = _data()
    model = _compiled(tiny_model())
    gp = GlobalPruning(model)
    gp.prune(0.7)
    pruned = {n: w == 0 for n, w in _kernels(model).items()}
    before = _kernels(model)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[gp])
    after = _kernels(model)
    for name in KERNELS:
        assert np.all(after[name][pruned[name]] == 0), name
        assert not np.allclose(after[name][~pruned[name]], before[name][~pruned[name]]), name
    # without the callback, momentum SGD moves the pruned weights again
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert any(np.any(_kernels(model)[n][pruned[n]] != 0) for n in KERNELS)


class _Recorder(keras.callbacks.Callback):
    """Weights at every epoch start and end, as the callbacks before it left them."""

    def __init__(self):
        super().__init__()
        self.begin, self.end = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.begin[epoch] = [w.copy() for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.end[epoch] = [w.copy() for w in self.model.get_weights()]


class _FakeMetric(keras.callbacks.Callback):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]


@pytest.mark.parametrize("rewind", ["stage_start", "best",
                                    pytest.param(None, marks=pytest.mark.slow)])
@pytest.mark.slow
def test_stages_rewind_to_the_stage_start_weights(rewind):
    x, y = _data()
    model = _compiled(tiny_model())
    recorder = _Recorder()
    gp = GlobalPruning(model, stages={0: 0.3, 2: 0.6}, rewind=rewind, monitor="score")
    # epoch 0 is the best of stage 0, so "best" differs from keeping the last weights
    model.fit(x, y, batch_size=16, epochs=4, verbose=0,
              callbacks=[_FakeMetric([0.9, 0.1, 0.2, 0.3]), gp, recorder])
    ids = {v.ref(): i for i, v in enumerate(model.weights)}
    kernels = [ids[v.ref()] for _, v in prunable_weights(model)]
    # stage 1's masks come from the current weights: those at the end of epoch 1
    masks = dict(zip(kernels, global_masks([recorder.end[1][i] for i in kernels], 0.6)))
    source = {"stage_start": recorder.begin[0],  # stage 0's start, after its pruning
              "best": recorder.end[0], None: recorder.end[1]}[rewind]
    got = recorder.begin[2]
    for i, (g, s) in enumerate(zip(got, source)):
        np.testing.assert_array_equal(g, s * masks[i] if i in masks else s, err_msg=str(i))
    assert not np.array_equal(recorder.begin[0][kernels[0]], recorder.end[1][kernels[0]])
    assert int(gp.stage.numpy()) == 2
    zeros = sum(int((got[i] == 0).sum()) for i in kernels)
    assert zeros / sum(got[i].size for i in kernels) == pytest.approx(0.6, abs=0.01)


def test_rewind_to_a_weights_file(tmp_path):
    model = tiny_model()
    path = str(tmp_path / "start.weights.h5")
    model.save_weights(path)
    start = model.get_weights()
    for layer in model.layers:  # training moved the weights
        layer.set_weights([w + 0.01 for w in layer.get_weights()])
    current = _kernels(model)
    masks = GlobalPruning(model).prune(0.5, rewind_to=path)
    reference = _reference_masks(current, 0.5)
    for name, mask in zip(KERNELS, masks):
        np.testing.assert_array_equal(mask > 0, reference[name])
        index = [i for i, v in enumerate(model.weights) if v is model.get_layer(name).weights[0]][0]
        np.testing.assert_array_equal(model.get_weights()[index], start[index] * mask)


@pytest.mark.slow
def test_cost_counts_the_zeros_and_tfmot_strip_keeps_them():
    model = tiny_model()
    GlobalPruning(model).prune(0.6)
    report = mntk.cost.estimate(model, task="cifar100")
    rows = {row.name: row for row in report.layers}
    for name, kernel in _kernels(model).items():
        assert rows[name].sparsity == pytest.approx(np.mean(kernel == 0)), name
    stripped = mntk.pruning.strip(model)
    for a, b in zip(stripped.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert mntk.pruning.sparsity(stripped)["dw"] == pytest.approx(np.mean(_kernels(model)["dw"] == 0))


def test_state_checkpoints_and_resume_does_not_prune_again(tmp_path):
    model = tiny_model()
    gp = GlobalPruning(model, stages={0: 0.5, 1: 0.7}, rewind="best", monitor="loss",
                       mode="min")
    gp.on_epoch_begin(0)  # what fit calls
    gp.on_epoch_end(0, {"loss": 1.0})
    assert int(gp.stage.numpy()) == 1
    ckpt = tf.train.Checkpoint(model=model, state=gp.variables)
    path = ckpt.save(str(tmp_path / "ckpt"))
    masks = [m.numpy() for m in gp.masks]

    resumed_model = tiny_model()
    resumed = GlobalPruning.from_config(gp.get_config(), model=resumed_model)
    tf.train.Checkpoint(model=resumed_model, state=resumed.variables).restore(path)
    for a, b in zip(resumed.masks, masks):
        np.testing.assert_array_equal(a.numpy(), b)
    assert int(resumed.stage.numpy()) == 1
    resumed.on_epoch_begin(0)  # stage 0 was entered before: nothing changes
    for a, b in zip(resumed.masks, masks):
        np.testing.assert_array_equal(a.numpy(), b)
    resumed.on_epoch_begin(1)  # stage 1 is new
    assert resumed.sparsity()["global"] == pytest.approx(0.7, abs=0.01)
    kept = GlobalPruning.masks_from_zeros(resumed_model)
    for a, b in zip(kept.masks, resumed.masks):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="rate"):
        GlobalPruning(tiny_model()).prune(1.0)
    with pytest.raises(ValueError, match="normalize"):
        GlobalPruning(tiny_model(), normalize="l1")
    with pytest.raises(ValueError, match="rewind"):
        GlobalPruning(tiny_model(), rewind="start")
    gp = GlobalPruning(tiny_model(), stages={0: 0.5}, rewind="best", monitor="val_accuracy")
    gp.on_epoch_begin(0)
    with pytest.raises(ValueError, match="val_accuracy"):
        gp.on_epoch_end(0, {"loss": 1.0})


@pytest.mark.slow
def test_masks_and_stages_under_mirrored_strategy():
    x, y = _data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _compiled(tiny_model())
    gp = GlobalPruning(model, stages={0: 0.5, 1: 0.7}, rewind="stage_start")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[gp])
    assert gp.sparsity()["global"] == pytest.approx(0.7, abs=0.01)
    for (_, variable), mask in zip(prunable_weights(model), gp.masks):
        np.testing.assert_array_equal(variable.numpy() != 0, mask.numpy() > 0)
