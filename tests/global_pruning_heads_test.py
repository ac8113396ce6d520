"""mntk.global_pruning on part of a model: the chosen layers ranked and pruned
among themselves, every other kernel's zeros held (OSI-AI's exit head pruned
on its pruned backbone); mntk.early_exit.exit_head_layers."""
import numpy as np
import pytest

import mntk
from mntk.global_pruning import GlobalPruning
from _quantization_helpers import tiny_model
from global_pruning_test import KERNELS, _compiled, _data, _kernels, _reference_masks


def test_pruning_only_named_layers_holds_the_other_zeros():
    """An exit head pruned after the backbone (OSI-AI): the chosen layers are
    ranked among themselves only; every other kernel keeps its zeros (and
    gains none) through fit."""
    x, y = _data()
    model = _compiled(tiny_model())
    GlobalPruning(model, layers=["stem", "dw", "pw"]).prune(0.6)   # the backbone's
    backbone_zeros = {n: w == 0 for n, w in _kernels(model).items()}
    before = _kernels(model)
    head = ("fc", "logits")
    gp = GlobalPruning(model, layers=list(head), hold_zeros=True)
    gp.prune(0.5)
    after = _kernels(model)
    expected = _reference_masks({n: before[n] for n in head}, 0.5)
    for name in head:
        np.testing.assert_array_equal(after[name], before[name] * expected[name], err_msg=name)
    assert sum(int((after[n] == 0).sum()) for n in head) == pytest.approx(
        0.5 * sum(after[n].size for n in head), abs=1)
    for name in set(KERNELS) - set(head):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[gp])
    trained = _kernels(model)
    for name in KERNELS:
        zeros = backbone_zeros[name] | (~expected[name] if name in head else False)
        assert np.all(trained[name][zeros] == 0), name
        assert np.all(trained[name][~zeros] != 0), name
    assert set(gp.sparsity()) == {"fc/kernel:0", "logits/kernel:0", "global"}
    assert GlobalPruning.from_config(gp.get_config(), model=model).hold_zeros
    with pytest.raises(ValueError, match="layers="):
        GlobalPruning(model, hold_zeros=True)


def test_exit_head_layers_are_the_layers_only_exits_use():
    model = tiny_model()
    multi = mntk.early_exit.add_exits(model, at=["dw_relu"], head="linear")
    heads = mntk.early_exit.exit_head_layers(multi)
    assert heads and all(name.startswith("exit_0") for name in heads)
    assert "exit_0" in heads
    assert not set(heads) & {layer.name for layer in model.layers}
