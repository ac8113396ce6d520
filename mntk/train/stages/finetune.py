"""Stage ``finetune``: learned bit widths frozen
(``mntk.quantization.freeze_precision``), ranges and weights fine-tuned for
``finetune.epochs`` (Texas-EIC's last phase), distilled from the float model
when ``quantize.distillation`` is on."""
from mntk import quantization
from mntk.train.errors import RecipeError
from mntk.train.fit import fit
from mntk.train.objectives import compile_model
from mntk.wrapped import is_quantized
from mntk.train.schema import section_train_config
from mntk.train.stages.quantize import loss_and_teacher, quantized_figures
from mntk.train.summary import StageSummary


def finetune_stage(ctx) -> StageSummary:
    config = ctx.config
    stage_cfg = section_train_config(config, "finetune")
    if not is_quantized(ctx.model):
        raise RecipeError("stage 'finetune' fine-tunes a quantized model; put 'quantize' "
                          "before it in config.stages.")
    loss, teacher, metrics = loss_and_teacher(ctx, config.quantize)
    with ctx.strategy.scope():
        frozen = quantization.freeze_precision(ctx.model)
        compile_model(ctx.model, config, loss, ctx.steps(), ctx.replicas, stage_cfg, metrics)
    history = fit(ctx, ctx.model, int(stage_cfg.epochs), [], teacher=teacher)
    scheme = config.quantize.scheme
    return StageSummary(quantization=quantized_figures(
        ctx, ctx.model, history, f"model_{scheme}_finetuned_int8.tflite", scheme=scheme,
        frozen_bit_widths=len(frozen), distillation=teacher is not None))
