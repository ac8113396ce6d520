"""mntk.pruning: short runs really prune, presets, strip, sparsity; TTQ keeps zeros."""
import numpy as np
import pytest

import mntk
import mntk.quantization as mq
from _quantization_helpers import compile_model, digits, tiny_model


def test_short_run_reaches_target_and_ternary_keeps_zeros():
    x, y = digits(256)
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
