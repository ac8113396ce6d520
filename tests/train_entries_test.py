"""Runner pieces the entries' recipes need: equal cosine cycles with fresh
optimizers, step schedules, coupled L2 once per model, the schema's new
fields, qat8's weight copy back into the float model, SRIP and L2 carried
into the global prune stage of a resumed run."""
import math

import numpy as np
import pytest

from mntk import quantization, schedules
from mntk.compat import keras
from mntk.train import schema
from mntk.train.errors import ConfigError, RecipeError
from mntk.train.objectives import compile_model
from mntk.train.optim import make_schedule
from mntk.train.stages.qat8 import copy_qat_weights


def _train_cfg(**overrides):
    return schema.resolve({"data": {"name": "digits"}, "model": {"name": "digits_cnn"},
                           "train": overrides})


def test_cosine_cycles_schedule_is_equal_cycles_with_scaled_floor():
    config = _train_cfg(epochs=4, schedule="cosine_cycles", restart_cycles=2,
                        learning_rate=0.1, min_learning_rate=5e-4)
    sched = make_schedule(config.train, steps_per_epoch=3, replicas=2)
    assert isinstance(sched, schedules.CosineCycles)
    assert sched.cycle_steps == 6 and sched.steps_per_epoch == 3
    assert float(sched(0)) == pytest.approx(0.2)
    assert float(sched(3)) == pytest.approx(1e-3 + (0.2 - 1e-3) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert float(sched(6)) == pytest.approx(0.2)          # cycle 2 restarts
    with pytest.raises(RecipeError, match="multiple of restart_cycles"):
        make_schedule(_train_cfg(epochs=5, schedule="cosine_cycles", restart_cycles=2).train, 3)


def test_step_schedule_switches_at_the_epochs():
    config = _train_cfg(epochs=10, schedule="step", learning_rate=0.1, step_epochs=(2, 5),
                        step_learning_rates=(0.01, 0.001), scale_with_replicas=False)
    sched = make_schedule(config.train, steps_per_epoch=4, replicas=2)
    np.testing.assert_allclose([float(sched(s)) for s in (0, 7, 8, 19, 20, 39)],
                               [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_coupled_l2_attached_once_per_model():
    config = _train_cfg(l2=1e-2, l2_on="kernels")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")])
    compile_model(model, config, "mse", steps_per_epoch=1)
    compile_model(model, config, "mse", steps_per_epoch=1)
    assert len(model.losses) == 1
    kernel = model.get_layer("d").kernel.numpy()
    assert float(model.losses[0]) == pytest.approx(0.5e-2 * np.sum(kernel ** 2), rel=1e-6)
    other = _train_cfg(l2=1e-3, l2_on="kernels")
    with pytest.raises(RecipeError, match="already carries coupled L2"):
        compile_model(model, other, "mse", steps_per_epoch=1)


@pytest.mark.parametrize("path,value", [("prune.method", "magnitude"),
                                        ("tricks.srip.gram", "rows"),
                                        ("train.l2_on", "weights"),
                                        ("prune.normalize", "l1")])
def test_schema_rejects_unknown_choices(path, value):
    section, *rest = path.split(".")
    node = {rest[-1]: value}
    for key in reversed(rest[:-1]):
        node = {key: node}
    with pytest.raises(ConfigError, match=path.replace(".", r"\.")):
        schema.resolve({"data": {"name": "digits"}, section: node})


def test_qat8_copies_trained_weights_back():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    qat = quantization.quantize(model, scheme="int8")
    kernel = next(v for v in qat.trainable_weights if v.name.startswith("conv/kernel"))
    kernel.assign(kernel + 1.0)
    trained = kernel.numpy()
    copied = copy_qat_weights(model, qat)
    assert "conv" in copied and "logits" in copied
    np.testing.assert_array_equal(model.get_layer("conv").kernel.numpy(), trained)


class _StopAtFit(keras.callbacks.Callback):
    """Records ``model.losses`` when fit number ``at`` begins, then stops the
    run (the prune stage's fit: no need to train or export it)."""

    def __init__(self, at):
        super().__init__()
        self.at, self.fits, self.losses = at, 0, None

    def on_train_begin(self, logs=None):
        self.fits += 1
        if self.fits == self.at:
            self.losses = [float(v) for v in self.model.losses]
            raise _Stopped()


class _Stopped(Exception):
    pass


@pytest.mark.slow   # a train stage and two starts of the prune stage: ~15 s CPU
def test_kaist_srip_and_l2_come_back_when_resumed_between_train_and_prune(tmp_path):
    """KAIST keeps SRIP and the coupled L2 on while pruning. A run resumed
    between the train and prune stages reloads the model from disk; the prune
    stage then trains under the same loss terms (same values: SRIP's fresh
    power-iteration starts follow the training step count) as in one process."""
    from mntk import train
    from recipes import kaist_cifar100
    config = kaist_cifar100.get_config("smoke")
    config.verbose = 0
    config.train.epochs, config.train.restart_cycles = 1, 1
    config.train.max_steps_per_epoch = 2
    config.prune.rates, config.prune.epochs, config.prune.restart_cycles = (0.5,), 1, 1
    workdir = str(tmp_path / "run")
    in_process = _StopAtFit(at=2)              # fit 1: train, fit 2: prune
    with pytest.raises(_Stopped):
        train.run(config, workdir, extra_callbacks=[in_process])
    resumed = _StopAtFit(at=1)                 # train is done: prune's fit is the first
    with pytest.raises(_Stopped):
        train.run(config, workdir, extra_callbacks=[resumed])
    assert len(in_process.losses) == 2         # SRIP, then the coupled L2
    np.testing.assert_allclose(resumed.losses, in_process.losses, rtol=1e-6)
    assert resumed.losses[0] > 0 and resumed.losses[1] > 0


def test_a_fit_can_turn_the_runs_mixing_off():
    """OSI-AI trained its exit head on unmixed images in a mixup run
    (early_exit.mix='none'): that fit's batches are plain one-hot rows, the
    run's other fits mixed."""
    import tensorflow as tf
    from mntk.train.context import RunContext, load_data
    from mntk.train.fit import training_data
    config = schema.resolve({"data": {"name": "digits", "mix": "mixup", "batch_size": 16},
                             "model": {"name": "digits_cnn"},
                             "train": {"max_steps_per_epoch": 2}})
    ctx = RunContext(config=config, workdir="", strategy=tf.distribute.get_strategy())
    ctx.data = load_data(config)

    def label_rows(mix):
        return np.concatenate([y.numpy() for _, y in training_data(ctx, 0, 1, mix=mix)])

    plain = label_rows("none")
    assert plain.shape == (32, 10) and set(np.unique(plain)) == {0.0, 1.0}
    np.testing.assert_array_equal(plain.sum(1), 1.0)
    mixed = label_rows(None)
    assert np.any((mixed > 0) & (mixed < 1))                # data.mix applies
    np.testing.assert_allclose(mixed.sum(1), 1.0, rtol=1e-5)
