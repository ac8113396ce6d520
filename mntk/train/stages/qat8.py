"""Stage ``qat8``: 8-bit quantization-aware training of a trained float model
(Texas-EIC's start point: the official B0 checkpoint fine-tuned with 8-bit
weights and activations before the adjustable-precision stage).

The float model is ``init_from`` (a .keras/.h5 file) when no earlier stage
made one, else the previous stage's. After fitting, the QAT weights are copied
back into the float model, so the next stage (``quantize`` with the learned
scheme) starts from them; the int8 TFLite file of the QAT model is verified
with LiteRT like the other quantized stages. ``qat8.label_smoothing`` and
``qat8.ema_decay`` (an exponential moving average of the weights, which the
stage ends with) are the entry's QAT settings; the 8-bit ranges are written
to ``quantizer_ranges.json`` for ``quantize.init_ranges="qat8"``.
"""
import os

from mntk import quantization
from mntk.serialization import load_model
from mntk.train.errors import RecipeError
from mntk.train.fit import fit
from mntk.compat import keras
from mntk.train.objectives import base_loss, compile_model, soft_labels
from mntk.train.schema import section_train_config
from mntk.train.stages.quantize import quantized_figures
from mntk.train.summary import StageSummary
from mntk.train.stages import _precision


def initial_model(ctx):
    """``init_from``'s model, checked against the data's input and classes."""
    path = ctx.config.init_from
    if not path:
        raise RecipeError("stage 'qat8' needs a trained float model: set "
                          "--config.init_from=PATH (.keras or .h5) or put a 'train' stage "
                          "before it.")
    if not os.path.exists(path):
        raise RecipeError(f"init_from={path!r} does not exist; give the trained float "
                          "model's .keras or .h5 file.")
    model = load_model(path, compile=False)
    if tuple(model.input_shape[1:]) != tuple(ctx.data.input_shape):
        raise RecipeError(f"init_from model {model.name!r} takes inputs "
                          f"{tuple(model.input_shape[1:])}, the data gives "
                          f"{tuple(ctx.data.input_shape)}; set data.image_size to match.")
    return model


def copy_qat_weights(float_model, qat_model):
    """Copy the QAT model's trained latent float variables into the float
    model's variables of the same name and shape (tfmot's wrappers keep the
    wrapped layer's variable names: ``conv/kernel``, ``bn/gamma``, ...).
    Returns the names of the float layers that received weights."""
    trained = {v.name.split(":")[0]: v for v in qat_model.weights}
    copied = set()
    for layer in float_model.layers:
        for variable in layer.weights:
            source = trained.get(variable.name.split(":")[0])
            if source is not None and source.shape == variable.shape:
                variable.assign(source)
                copied.add(layer.name)
    return sorted(copied)


def qat8_stage(ctx) -> StageSummary:
    config = ctx.config
    stage_cfg = section_train_config(config, "qat8")
    with ctx.strategy.scope():
        if ctx.model is None:
            ctx.model = initial_model(ctx)
        model = quantization.quantize(ctx.model, scheme="int8")
        smoothing = float(config.qat8.label_smoothing)
        loss = base_loss(config) if not smoothing else (
            keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
            if soft_labels(config) else
            quantization.CrossEntropyWithLogitDistance(distance=0.0, label_smoothing=smoothing))
        compile_model(model, config, loss, ctx.steps(), ctx.replicas, stage_cfg,
                      ema_decay=float(config.qat8.ema_decay))
    # with ema_decay, fit ends by putting the averaged weights into the model:
    # what is evaluated, exported and handed on below
    history = fit(ctx, model, int(stage_cfg.epochs), [])
    _precision.save_ranges(ctx, model)
    figures = quantized_figures(ctx, model, history, "model_qat8_int8.tflite", scheme="int8",
                                distillation=False, cost_target=None)
    copied = copy_qat_weights(ctx.model, model)
    if not copied:
        raise RecipeError("qat8: no trained weights could be copied back into the float "
                          "model (layer names changed?).")
    return StageSummary(quantization=figures)
