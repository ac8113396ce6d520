"""Stage ``finetune``: learned bit widths frozen
(``mntk.quantization.freeze_precision``), ranges and weights fine-tuned for
``finetune.epochs`` (Texas-EIC's last phase), distilled from the float model
when ``quantize.distillation`` is on; with ``finetune.swa`` the weights are
averaged (``mntk.callbacks.StochasticWeightAveraging``), with
``finetune.alpha`` weighting the cross-entropy of Texas-EIC's loss."""
from mntk import quantization
from mntk.train.errors import RecipeError
from mntk.train.fit import fit
from mntk.train.objectives import compile_model
from mntk.wrapped import is_quantized
from mntk.train.schema import section_train_config
from mntk.train.stages.quantize import loss_and_teacher, quantized_figures
from mntk.train.summary import StageSummary
from mntk.train.stages import _precision


def finetune_stage(ctx) -> StageSummary:
    config = ctx.config
    stage_cfg = section_train_config(config, "finetune")
    if not is_quantized(ctx.model):
        raise RecipeError("stage 'finetune' fine-tunes a quantized model; put 'quantize' "
                          "before it in config.stages.")
    qcfg = config.quantize
    entry_loss = bool(qcfg.phases) or (qcfg.distillation.enabled
                                       and qcfg.distillation.form == "logit_distance")
    loss, teacher, metrics = loss_and_teacher(
        ctx, qcfg, float(config.finetune.alpha) if entry_loss else None)
    phases = getattr(ctx.model, "_mntk_phases", None)
    if phases is not None:
        phases.beta.assign(0.0)  # bits frozen: no cost term (Texas-EIC's last phase, beta 0)
    with ctx.strategy.scope():
        frozen = quantization.freeze_precision(ctx.model)
        compile_model(ctx.model, config, loss, ctx.steps(), ctx.replicas, stage_cfg, metrics)
        swa = _precision.swa_callback(ctx, ctx.model, config.finetune.swa)
    # the SWA average is backed up with the epoch, so a resumed run continues it
    history = fit(ctx, ctx.model, int(stage_cfg.epochs), [swa] if swa else [], teacher=teacher,
                  state=swa.state_variables if swa else ())
    scheme = config.quantize.scheme
    return StageSummary(quantization=quantized_figures(
        ctx, ctx.model, history, f"model_{scheme}_finetuned_int8.tflite", scheme=scheme,
        frozen_bit_widths=len(frozen), distillation=teacher is not None,
        swa=dict(config.finetune.swa.items()) if swa else None))
