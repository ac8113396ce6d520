"""Stage ``quantize``: quantization-aware fine-tuning with ``quantize.scheme``
(TTQ ternary, learned bit widths, binary, int8), optionally with the
Texas-EIC cost target and distillation from the float model, then an int8
TFLite file verified against Keras with LiteRT.

``quantize.cost_target`` (learned scheme) adds ``mntk.losses.CostTarget`` to
the loss; ``quantize.distillation`` fits ``mntk.losses.Distillation``
(Hinton et al. 2015), or Texas-EIC's logit distance
(``mntk.quantization.CrossEntropyWithLogitDistance``), against the float
model of the latest earlier stage. Texas-EIC's loss phases, the bit widths'
own rate and tenths and the start from the qat8 stage's ranges are
``_precision``'s.
The helpers here (``loss_and_teacher``, ``quantized_figures``) are shared
with the ``finetune`` stage.
"""
import os
from typing import Optional, Set

from mntk import export, losses, pruning, quantization
from mntk.serialization import load_model
from mntk.train.errors import RecipeError
from mntk.train.evaluation import cost_summary, evaluate, tflite_figures, verify_examples
from mntk.train.fit import fit
from mntk.train.objectives import base_loss, compile_model, first_column_accuracy
from mntk.wrapped import is_pruned
from mntk.train.schema import SCHEMES, section_train_config
from mntk.train.summary import QuantizationFigures, StageSummary
from mntk.train.stages import _precision

LEARNED_FIELDS = ("init_bits", "min_bits", "max_bits", "learn_activations",
                  "activation_init_bits", "activation_min_bits", "activation_max_bits",
                  "activation_per_channel")


def make_scheme(cfg):
    """The ``mntk.quantization`` scheme named by ``quantize.scheme``."""
    if cfg.scheme == "ternary":
        return quantization.TernaryScheme(threshold=float(cfg.threshold),
                                          init=cfg.ternary_init,
                                          decay_scales=bool(cfg.decay_scales))
    if cfg.scheme == "learned":
        # unset (None) fields keep LearnedPrecisionScheme's own defaults
        return quantization.LearnedPrecisionScheme(
            **{k: cfg[k] for k in LEARNED_FIELDS if cfg[k] is not None})
    if cfg.scheme == "binary":
        return quantization.BinaryScheme()
    if cfg.scheme == "int8":
        return "int8"
    raise RecipeError(f"quantize.scheme={cfg.scheme!r} is unknown; use one of "
                      f"{', '.join(SCHEMES)}.")


def _skip(cfg) -> Optional[Set[str]]:
    if cfg.skip == "default":
        return None          # the scheme's own default (TTQ: first conv, last dense)
    if cfg.skip == "none":
        return set()
    return set(cfg.skip)


def teacher_model(ctx):
    """The float model of the latest earlier stage that saved one
    (``stages/<k>_<name>/model.keras``), loaded for distillation.

    Read from disk rather than kept in memory so a resumed run gets the same
    teacher."""
    stages_dir = os.path.dirname(ctx.stage_dir)
    here = int(os.path.basename(ctx.stage_dir).split("_", 1)[0])
    for k in range(here - 1, -1, -1):
        for entry in os.listdir(stages_dir):
            path = os.path.join(stages_dir, entry, "model.keras")
            if entry.startswith(f"{k}_") and os.path.exists(path):
                model = load_model(path, compile=False)
                return pruning.strip(model) if is_pruned(model) else model
    raise RecipeError("quantize.distillation needs a float model from an earlier stage "
                      "(e.g. 'train') in config.stages.")


def loss_and_teacher(ctx, cfg, alpha=None):
    """(loss, teacher model or None, metrics or None) of a quantized stage.

    ``alpha`` (a float or ``PrecisionPhases.alpha``): the cross-entropy's
    weight, Texas-EIC's loss (``CrossEntropyWithLogitDistance``); None: the
    recipe's base loss."""
    distill = cfg.distillation
    if distill.enabled and distill.form == "logit_distance":
        loss = quantization.CrossEntropyWithLogitDistance(
            alpha=1.0 if alpha is None else alpha, distance=float(distill.distance))
        return loss, teacher_model(ctx), [first_column_accuracy]
    if alpha is not None:
        if distill.enabled:
            raise RecipeError("quantize.phases weight the cross-entropy, which "
                              "quantize.distillation.form='hinton' replaces; use "
                              "form='logit_distance' (Texas-EIC) or no distillation.")
        return quantization.CrossEntropyWithLogitDistance(alpha=alpha, distance=0.0), None, None
    if not distill.enabled:
        return base_loss(ctx.config), None, None
    loss = losses.Distillation(temperature=float(distill.temperature), alpha=float(distill.alpha))
    return loss, teacher_model(ctx), [first_column_accuracy]


def quantize_stage(ctx) -> StageSummary:
    config, cfg = ctx.config, ctx.config.quantize
    stage_cfg = section_train_config(config, "quantize")
    n_steps = ctx.steps()
    with ctx.strategy.scope():   # its alpha and beta are read in every replica's step
        schedule = _precision.phases(cfg)
    loss, teacher, metrics = loss_and_teacher(ctx, cfg, schedule and schedule.alpha)
    target_cfg = cfg.cost_target
    with ctx.strategy.scope():
        model = quantization.quantize(ctx.model, scheme=make_scheme(cfg), skip=_skip(cfg))
        if cfg.init_ranges == "qat8":
            _precision.load_ranges(ctx, model, kernels=not config.qat8.ema_decay)
        if target_cfg.enabled:
            if cfg.scheme != "learned":
                raise RecipeError("quantize.cost_target needs quantize.scheme='learned' "
                                  f"(got {cfg.scheme!r}): only learned bit widths move.")
            if target_cfg.target is None:
                raise RecipeError("quantize.cost_target.enabled needs quantize.cost_target.target "
                                  "(the mean bits to reach, e.g. 2.94, or with measure='score' "
                                  "the MicroNet score, e.g. 0.4678).")
            model.add_loss(losses.CostTarget(
                model, target=float(target_cfg.target), measure=target_cfg.measure,
                coefficient=schedule.beta if schedule else float(target_cfg.coefficient),
                include_activations=bool(target_cfg.include_activations),
                relative=bool(target_cfg.relative), task=config.cost.task or "imagenet"))
        compile_model(model, config, loss, n_steps, ctx.replicas, stage_cfg, metrics,
                      bits=_precision.bit_options(cfg, stage_cfg, n_steps, schedule))
    epochs = _precision.stage_epochs(cfg, stage_cfg, schedule)
    history = fit(ctx, model, epochs, [schedule] if schedule else [], teacher=teacher)
    model._mntk_phases = schedule   # the finetune stage zeroes its beta
    ctx.model = model
    return StageSummary(quantization=quantized_figures(
        ctx, model, history, f"model_{cfg.scheme}_int8.tflite", scheme=cfg.scheme,
        distillation=teacher is not None,
        cost_target=dict(target_cfg.items()) if target_cfg.enabled else None,
        phases=[list(p) for p in cfg.phases] or None))


def quantized_figures(ctx, model, history, filename, **fields) -> QuantizationFigures:
    """Accuracy, bits, int8 TFLite parity, packed size and cost of a QAT model."""
    path = os.path.join(ctx.workdir, filename)
    result = export.to_tflite(model, path, quantize="int8", progress=False)
    check = export.verify(path, model, ctx.data.arrays("test", verify_examples(ctx.config)))
    bits = quantization.bit_widths(model)
    acts = [v["activations"] for v in bits.values() if v["activations"] is not None]
    size = export.size_report(model, path)
    size = size.to_dict() if hasattr(size, "to_dict") else dict(size)
    return QuantizationFigures(
        accuracy=evaluate(model, ctx.data),
        mean_weight_bits=float(quantization.mean_weight_bits(model)),
        mean_activation_bits=float(sum(acts) / len(acts)) if acts else None,
        tflite=tflite_figures(path, ctx.workdir, result.bytes, check),
        size={k: v for k, v in size.items() if k != "layers"},  # per-layer rows: cost.json
        history=history, cost=cost_summary(ctx, model), **fields)
