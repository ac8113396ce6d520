"""The runner's Texas-EIC options: an EMA of the weights (qat8.ema_decay)
against numpy, the phases' and bit-rate fields checked at load and in the
stage, with errors that name the field."""
import numpy as np
import pytest

from mntk.compat import keras
from mntk.quantization import BitWidthAdam
from mntk.train import schema
from mntk.train.errors import ConfigError, RecipeError
from mntk.train.optim import make_optimizer
from mntk.train.stages import _precision


def _config(**quantize):
    return schema.resolve({
        "data": {"name": "digits"}, "stages": ("qat8", "quantize"),
        "train": {"optimizer": "sgd", "learning_rate": 0.1, "momentum": 0.0,
                  "nesterov": False},
        "quantize": dict({"scheme": "learned"}, **quantize)})


def test_ema_of_the_weights_is_what_fit_leaves_in_the_model():
    """a_0 = w_0, a_t = d a_(t-1) + (1 - d) w_t after each step; fit ends with w = a_T."""
    config = _config()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)])
    model.compile(make_optimizer(schema.section_train_config(config, "qat8"), 5,
                                 ema_decay=0.8), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)).astype("float32"), rng.normal(size=(20, 2))
    weights = [model.layers[0].kernel.numpy().copy()]

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            weights.append(model.layers[0].kernel.numpy().copy())
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[Record()])
    average = weights[0]
    for w in weights[1:]:
        average = 0.8 * average + 0.2 * w
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), average, rtol=1e-5)
    assert not np.allclose(weights[-1], average)   # the raw weights were elsewhere


def test_bit_options_make_a_bit_width_adam_scaled_like_the_rate():
    config = _config(optimizer="adam", learning_rate=3e-6, bits_learning_rate=1e-3,
                     bits_tenths="alternate", phases=((3, 7.0, 85.0, True),
                                                      (3, 7.0, 115.0, True)))
    cfg = schema.section_train_config(config, "quantize")
    phases = _precision.phases(config.quantize)
    assert _precision.stage_epochs(config.quantize, cfg, phases) == 6
    bits = _precision.bit_options(config.quantize, cfg, 50, phases)
    opt = make_optimizer(cfg, 50, replicas=2, bits=bits)
    assert isinstance(opt, BitWidthAdam) and opt.bits_tenths == "alternate"
    assert opt.bits_learning_rate == pytest.approx(2e-3)   # x replicas, like the rate
    assert float(opt.learning_rate.numpy()) == pytest.approx(6e-6)
    # no bit options: a plain optimizer
    plain = _config(optimizer="adam")
    assert _precision.bit_options(plain.quantize, cfg, 50, None) is None


def test_phase_and_bit_fields_are_checked():
    with pytest.raises(ConfigError, match="quantize.phases"):
        _config(phases=((3, 7.0, 85.0),))
    config = _config(epochs=5, phases=((3, 7.0, 85.0, True),))
    cfg = schema.section_train_config(config, "quantize")
    with pytest.raises(RecipeError, match="add up to 3"):
        _precision.stage_epochs(config.quantize, cfg, _precision.phases(config.quantize))
    config = _config(bits_tenths="alternate")
    with pytest.raises(RecipeError, match="tenths"):
        _precision.bit_options(config.quantize, cfg, 8, None)
    config = _config(scheme="ternary", phases=((1, 1.0, 1.0, True),))
    with pytest.raises(RecipeError, match="learned"):
        _precision.phases(config.quantize)
    with pytest.raises(RecipeError, match="'adam'"):
        make_optimizer(cfg, 50, bits={"bits_learning_rate": 1e-3, "steps_per_epoch": 50,
                                      "bits_tenths": "all"})
