"""apply_srip's entry options: which Gram side, fresh or persistent power
vector (KAIST's SRIP form, Regularization/orthogonal_weight.py:101-129)."""
import numpy as np
import pytest

import mntk
from mntk.compat import keras
from _marks import fast_first


def _model():
    inputs = keras.Input((4, 4, 8))
    x = keras.layers.Conv2D(3, 1, use_bias=False, name="narrow")(inputs)   # fan-in 8 > 3
    x = keras.layers.Conv2D(5, 1, use_bias=False, name="wide")(x)          # fan-in 3 < 5
    model = keras.Model(inputs, x)
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        layer.kernel.assign(rng.normal(0, 0.6, size=layer.kernel.shape).astype(np.float32))
    return model


def _sigma_sq(m):
    return np.linalg.norm(m, 2) ** 2


def _reference(model, gram):
    values = []
    for name in ("narrow", "wide"):
        w = model.get_layer(name).kernel.numpy().reshape(-1, model.get_layer(name).filters)
        fan_in, fan_out = w @ w.T - np.eye(w.shape[0]), w.T @ w - np.eye(w.shape[1])
        if gram == "smaller":
            values.append(_sigma_sq(fan_in if w.shape[0] < w.shape[1] else fan_out))
        else:
            values.append(_sigma_sq(fan_in if gram == "fan_in" else fan_out))
    return values


@pytest.mark.parametrize("gram", fast_first(["smaller", "fan_in", "fan_out"]))
@pytest.mark.parametrize("vector", fast_first(["fresh", "persistent"]))
def test_gram_side_and_vector_converge_to_numpy(gram, vector):
    model = _model()
    mntk.regularizers.apply_srip(model, 0.7, "pointwise", power_iterations=200,
                                 squared=True, reduction="mean", gram=gram, vector=vector)
    loss = float(model.losses[0])
    assert loss == pytest.approx(0.7 * np.mean(_reference(model, gram)), rel=1e-3)


def test_fan_in_side_differs_from_smaller_on_a_narrow_layer():
    """With small weights the fan-in Gram of a narrow layer has zero eigenvalues
    (residual -1, sigma 1) that the smaller Gram does not."""
    model = _model()
    for layer in model.layers[1:]:
        layer.kernel.assign(layer.kernel * 0.1)
    ref_fan_in, ref_smaller = _reference(model, "fan_in"), _reference(model, "smaller")
    assert ref_fan_in[0] == pytest.approx(1.0, abs=1e-6)                 # 8x8: rank 3
    assert ref_smaller[0] < 0.999                                        # 3x3
    assert ref_fan_in[1] == pytest.approx(ref_smaller[1])             # 3x3 both


def test_fresh_vector_draws_a_new_start_each_training_step():
    """A new start per training step (a reading under a GradientTape), the same
    start for reads outside one; the starts follow the step counter, which is
    backed-up state: reset it and the draws repeat."""
    import tensorflow as tf
    model = _model()
    reg = mntk.regularizers.apply_srip(model, 1.0, power_iterations=1, squared=True,
                                       gram="fan_in", vector="fresh")

    def step():
        with tf.GradientTape():
            return float(model.losses[0])

    outside = {float(model.losses[0]) for _ in range(3)}
    assert len(outside) == 1            # no training step: no new draw
    first = [step() for _ in range(4)]
    assert len(set(first)) == 4         # one product from a random start varies
    assert int(reg.fresh_step.numpy()) == 4
    assert reg.variables[-1] is reg.fresh_step and len(reg.variables) == 2
    reg.fresh_step.assign(0)
    assert [step() for _ in range(4)] == first


def test_persistent_fan_in_vectors_are_backed_up_state():
    model = _model()
    reg = mntk.regularizers.apply_srip(model, 1.0, gram="fan_in", vector="persistent")
    sizes = sorted(int(v.shape[0]) for v in reg.variables[1:])
    assert sizes == [3, 8]


def test_bad_options_name_the_fix():
    with pytest.raises(ValueError, match="gram="):
        mntk.regularizers.apply_srip(_model(), gram="rows")
    with pytest.raises(ValueError, match="vector="):
        mntk.regularizers.apply_srip(_model(), vector="random")
