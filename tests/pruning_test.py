"""mntk.pruning: short runs really prune, presets, strip, sparsity; TTQ keeps zeros."""
import numpy as np
import pytest

import mntk
import mntk.quantization as mq
from _quantization_helpers import compile_model, tiny_model


@pytest.mark.slow
def test_short_run_reaches_target_and_ternary_keeps_zeros(digits_split):
    x, y = (a[:256] for a in digits_split[0])
    pruned = compile_model(mntk.pruning.prune(tiny_model(), target=0.6,
                                              steps_per_epoch=8, epochs=2))
    pruned.fit(x, y, batch_size=32, epochs=2, verbose=0,
               callbacks=mntk.pruning.callbacks())
    sparsity = mntk.pruning.sparsity(pruned)
    # tfmot's registry does not prune DepthwiseConv2D kernels.
    assert sparsity.pop("dw") == 0.0
    assert all(abs(v - 0.6) < 0.03 for v in sparsity.values()), sparsity
    stripped = mntk.pruning.strip(pruned)
    assert {k: v for k, v in mntk.pruning.sparsity(stripped).items()
            if k != "dw"} == pytest.approx(sparsity)
    q = compile_model(mq.quantize(pruned, scheme=mq.TernaryScheme()))
    q.fit(x, y, batch_size=32, epochs=1, verbose=0)
    for name, kernel in mq.quantized_weights(q).items():
        zeros = stripped.get_layer(name).get_weights()[0] == 0
        assert np.all(kernel[zeros] == 0), name


def test_fitted_frequency_and_presets():
    assert mntk.pruning.fitted_frequency(total_steps=40) == 2
    assert mntk.pruning.fitted_frequency(steps_per_epoch=1000) == 100
    sched = mntk.pruning.make_schedule(0.6, "kaist", begin_step=0, end_step=90)
    # stages at 0, 30, 60 with 0.2, 0.4, 0.6 (thirds of the target)
    assert [s for s, _ in sched.stages] == [0, 30, 60]
    assert [round(v, 6) for _, v in sched.stages] == [0.2, 0.4, 0.6]
    assert float(sched(45)[1]) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="end_step"):
        mntk.pruning.make_schedule(0.5, "polynomial")
    with pytest.raises(ValueError, match="schedule"):
        mntk.pruning.make_schedule(0.5, "cubic", end_step=10)


def _snapshot(model):
    return ([w.copy() for w in model.get_weights()], [l.trainable for l in model.layers],
            len(model.losses), model.to_json(), [id(l) for l in model.layers])


def test_prune_leaves_the_model_untouched_and_layers_subset_works(digits_split):
    from mntk.compat import keras
    model = tiny_model()
    before = _snapshot(model)
    x, y = (a[:64] for a in digits_split[0])
    pruned = compile_model(mntk.pruning.prune(model, target=0.5, layers=["pw", "logits"],
                                              steps_per_epoch=2, epochs=1))
    wrapped = {l.layer.name for l in pruned.layers if hasattr(l, "pruning_vars")}
    assert wrapped == {"pw", "logits"}
    x8 = x[:, :8, :8]
    np.testing.assert_allclose(pruned.predict(x8, verbose=0), model.predict(x8, verbose=0),
                               rtol=1e-5, atol=1e-6)
    pruned.fit(x8, y, batch_size=32, epochs=1, verbose=0, callbacks=mntk.pruning.callbacks())
    sparsity = mntk.pruning.sparsity(mntk.pruning.strip(pruned))
    assert sparsity["pw"] == pytest.approx(0.5, abs=0.02) and sparsity["stem"] == 0.0
    weights, trainable, losses, config, ids = before
    for a, b in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    assert [l.trainable for l in model.layers] == trainable
    assert len(model.losses) == losses and model.to_json() == config
    assert [id(l) for l in model.layers] == ids
    with pytest.raises(ValueError, match="cannot prune layers \\['stem_relu'\\]"):
        mntk.pruning.prune(model, layers=["stem_relu"])
    del keras


def test_layers_tfmot_refuses_stay_dense():
    from mntk.compat import keras

    class Scale(keras.layers.Layer):  # a custom layer tfmot's registry refuses
        def call(self, x):
            return 2.0 * x

    inp = keras.Input((8, 8, 1))
    h = keras.layers.Rescaling(1 / 16.0, name="scale")(inp)
    h = keras.layers.Conv2D(8, 3, name="conv")(h)
    h = Scale(name="custom")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(h))
    pruned = mntk.pruning.prune(model, target=0.5, steps_per_epoch=2, epochs=1)
    kinds = {getattr(l, "layer", l).name: type(l).__name__ for l in pruned.layers}
    assert kinds["conv"] == kinds["logits"] == "PruneLowMagnitude"
    assert kinds["custom"] == "Scale" and kinds["scale"] == "Rescaling"
