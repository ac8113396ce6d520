"""The quantization stages: ``quantize`` (QAT with a scheme, optionally the
Texas-EIC cost target and distillation from the float model) and
``finetune`` (learned bit widths frozen, ranges and weights fine-tuned).

Both end with an int8 TFLite file verified against Keras with LiteRT.
"""
import os
from typing import Any, Dict

from mntk import fitting
from mntk.train import RecipeError

SCHEMES = ("ternary", "learned", "binary", "int8")


def make_scheme(cfg):
    """The ``mntk.quantization`` scheme named by ``quantize.scheme``."""
    from mntk import quantization
    name = cfg.scheme
    if name == "ternary":
        return quantization.TernaryScheme(threshold=float(cfg.get("threshold", 0.05)))
    if name == "learned":
        kwargs = {k: cfg[k] for k in ("init_bits", "min_bits", "max_bits", "learn_activations",
                                      "activation_init_bits", "activation_min_bits",
                                      "activation_max_bits") if k in cfg}
        return quantization.LearnedPrecisionScheme(**kwargs)
    if name == "binary":
        return quantization.BinaryScheme()
    if name == "int8":
        return "int8"
    raise RecipeError(f"quantize.scheme={name!r} is unknown; use one of {', '.join(SCHEMES)}.")


def _skip(cfg):
    skip = cfg.get("skip", "default")
    if skip == "default":
        return None          # the scheme's own default (TTQ: first conv, last dense)
    if skip == "none":
        return set()
    return set(skip)


def teacher_model(ctx):
    """The float model of the latest earlier stage that saved one
    (``stages/<k>_<name>/model.keras``), loaded for distillation.

    Read from disk rather than kept in memory so a resumed run gets the same
    teacher."""
    from mntk.serialization import load_model
    stages_dir = os.path.dirname(ctx.stage_dir)
    here = int(os.path.basename(ctx.stage_dir).split("_", 1)[0])
    for k in range(here - 1, -1, -1):
        for entry in os.listdir(stages_dir):
            path = os.path.join(stages_dir, entry, "model.keras")
            if entry.startswith(f"{k}_") and os.path.exists(path):
                model = load_model(path, compile=False)
                if any(type(l).__name__ == "PruneLowMagnitude" for l in model.layers):
                    from mntk import pruning
                    model = pruning.strip(model)
                return model
    raise RecipeError("quantize.distillation needs a float model from an earlier stage "
                      "(e.g. 'train') in config.stages.")


def _loss_and_teacher(ctx, cfg):
    distill = cfg.get("distillation", {})
    if not distill.get("enabled", False):
        return fitting.base_loss(ctx.config), None, None
    from mntk import losses
    teacher = teacher_model(ctx)
    loss = losses.Distillation(temperature=float(distill.get("temperature", 4.0)),
                               alpha=float(distill.get("alpha", 0.5)))
    return loss, teacher, [fitting.first_column_accuracy]


def quantize_stage(ctx) -> Dict[str, Any]:
    """Quantization-aware fine-tuning with ``quantize.scheme``, then int8 TFLite.

    ``quantize.cost_target`` (learned scheme) adds ``mntk.losses.CostTarget``
    to the loss; ``quantize.distillation`` fits ``mntk.losses.Distillation``
    against the float model of the previous stage (Hinton et al. 2015).
    """
    from mntk import losses, quantization
    config, cfg = ctx.config, ctx.config.quantize
    stage_cfg = fitting.section_train_config(config, "quantize")
    n_steps = fitting.steps(ctx)
    loss, teacher, metrics = _loss_and_teacher(ctx, cfg)
    target_cfg = cfg.get("cost_target", {})
    with ctx.strategy.scope():
        model = quantization.quantize(ctx.model, scheme=make_scheme(cfg), skip=_skip(cfg))
        if target_cfg.get("enabled", False):
            if cfg.scheme != "learned":
                raise RecipeError("quantize.cost_target needs quantize.scheme='learned' "
                                  f"(got {cfg.scheme!r}): only learned bit widths move.")
            model.add_loss(losses.CostTarget(
                model, target=float(target_cfg.target),
                coefficient=float(target_cfg.get("coefficient", 0.1)),
                include_activations=bool(target_cfg.get("include_activations", False))))
        fitting.compile_model(model, config, loss, n_steps, ctx.replicas, stage_cfg, metrics)
    history = fitting.fit(ctx, model, int(stage_cfg.epochs), [], teacher=teacher)
    ctx.model = model
    out = {"scheme": cfg.scheme, "distillation": teacher is not None,
           "cost_target": dict(target_cfg) if target_cfg.get("enabled", False) else None}
    out.update(_quantized_figures(ctx, model, history, f"model_{cfg.scheme}_int8.tflite"))
    return {"quantization": out}


def finetune_stage(ctx) -> Dict[str, Any]:
    """Learned bit widths frozen (``mntk.quantization.freeze_precision``);
    ranges and weights fine-tuned for ``finetune.epochs`` (Texas-EIC's last
    phase), distilled from the float model when ``quantize.distillation`` is on."""
    from mntk import quantization
    config = ctx.config
    stage_cfg = fitting.section_train_config(config, "finetune")
    if not any(type(l).__name__ == "QuantizeWrapperV2" for l in ctx.model.layers):
        raise RecipeError("stage 'finetune' fine-tunes a quantized model; put 'quantize' "
                          "before it in config.stages.")
    loss, teacher, metrics = _loss_and_teacher(ctx, config.quantize)
    with ctx.strategy.scope():
        frozen = quantization.freeze_precision(ctx.model)
        fitting.compile_model(ctx.model, config, loss, fitting.steps(ctx), ctx.replicas,
                              stage_cfg, metrics)
    history = fitting.fit(ctx, ctx.model, int(stage_cfg.epochs), [], teacher=teacher)
    out = {"scheme": config.quantize.scheme, "frozen_bit_widths": len(frozen),
           "distillation": teacher is not None}
    out.update(_quantized_figures(ctx, ctx.model, history,
                                  f"model_{config.quantize.scheme}_finetuned_int8.tflite"))
    return {"quantization": out}


def _quantized_figures(ctx, model, history, filename) -> Dict[str, Any]:
    from mntk import export, quantization
    data, config = ctx.data, ctx.config
    path = os.path.join(ctx.workdir, filename)
    result = export.to_tflite(model, path, quantize="int8", progress=False)
    check = export.verify(path, model, data.arrays(
        "test", int(config.get("export", {}).get("verify_examples", 0) or 0) or None))
    bits = quantization.bit_widths(model)
    acts = [v["activations"] for v in bits.values() if v["activations"] is not None]
    out = {"accuracy": fitting.evaluate(model, data),
           "mean_weight_bits": float(quantization.mean_weight_bits(model)),
           "mean_activation_bits": float(sum(acts) / len(acts)) if acts else None,
           "tflite": {"path": os.path.relpath(path, ctx.workdir), "bytes": result.bytes,
                      **fitting.verify_figures(check)},
           "size": _size_report(model, path), "history": history}
    out.update(fitting.cost_summary(ctx, model))
    return out


def _size_report(model, path):
    from mntk import export
    report = export.size_report(model, path)
    report = report.to_dict() if hasattr(report, "to_dict") else dict(report)
    return {k: v for k, v in report.items() if k != "layers"}  # per-layer rows: cost.json
