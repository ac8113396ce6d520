"""Stage ``prune``: magnitude pruning (tfmot) of the current model to
``prune.target`` (Zhu & Gupta 2017 polynomial schedule by default), or with
``prune.method="global"`` one magnitude threshold over every kernel
(``mntk.global_pruning``, KAIST / OSI-AI) in ``len(prune.rates)`` equal
stages, the masks recomputed at each stage's rate (``prune.normalize``) and
the weights rewound (``prune.rewind``); the model stays a plain Keras model,
so the losses the train stage attached to it (SRIP, coupled L2) stay on.

``ctx.model`` stays wrapped so a following ``quantize`` stage keeps the
zeros; ``export`` strips the wrappers. Either way the stage also writes the
pruned model as a float TFLite file, sparse-encoded (``mntk.export.to_tflite``'s
default for pruned models) and verified with LiteRT:
``model_pruned_float.tflite``."""
import os

from mntk import export, global_pruning, losses, pruning, wrapped
from mntk.train.errors import RecipeError
from mntk.train.evaluation import cost_summary, evaluate, tflite_figures, verify_examples
from mntk.train.fit import fit
from mntk.train.objectives import base_loss, classifier_layer, compile_model, \
    restore_train_srip
from mntk.train.schema import section_train_config
from mntk.train.summary import PruningFigures, StageSummary


def _pruned_tflite(ctx, model):
    """The pruned model as a sparse-encoded float TFLite file, verified."""
    plain = pruning.strip(model) if wrapped.is_pruned(model) else model
    path = os.path.join(ctx.workdir, "model_pruned_float.tflite")
    result = export.to_tflite(plain, path, progress=False)
    check = export.verify(result, plain,
                          ctx.data.arrays("test", verify_examples(ctx.config)))
    return tflite_figures(path, ctx.workdir, result.bytes, check, result)


def global_stages(rates, epochs: int, section: str = "prune"):
    """``{first epoch: rate}`` of equal stages over ``epochs``."""
    rates = [float(r) for r in rates]
    if not rates or epochs % len(rates):
        raise RecipeError(f"global pruning needs {section}.rates (one per stage) and "
                          f"{section}.epochs a multiple of their number; got rates="
                          f"{tuple(rates)}, epochs={epochs}.")
    per = epochs // len(rates)
    return {i * per: r for i, r in enumerate(rates)}


def _global_prune_stage(ctx, config, cfg, stage_cfg) -> StageSummary:
    rates = [float(r) for r in cfg.rates]
    epochs = int(stage_cfg.epochs)
    stages = global_stages(rates, epochs)
    n_steps = ctx.steps()
    model = ctx.model
    with ctx.strategy.scope():
        gp = global_pruning.GlobalPruning(
            model, stages=stages,
            normalize=None if cfg.normalize == "none" else cfg.normalize,
            rewind=None if cfg.rewind == "none" else cfg.rewind, monitor="val_accuracy")
        # SRIP stays on from the train stage (KAIST), also when the model was
        # reloaded from disk (a resumed run); the coupled L2 comes back in
        # compile_model, after it, in the same order as in one process
        restore_train_srip(model, config, int(config.train.epochs) * n_steps)
        loss = base_loss(config)
        if cfg.smoothing_epsilon:
            loss = losses.AdaptiveLabelSmoothing(classifier_layer(model, config),
                                                 epsilon=float(cfg.smoothing_epsilon))
        compile_model(model, config, loss, n_steps, ctx.replicas, stage_cfg)
    extra = [gp] + ([loss.callback()] if hasattr(loss, "callback") else [])
    # the masks, stage counter, rewind snapshot and best metric go into the
    # resume backup: a run killed inside the stage resumes with the masks and
    # rewind point an uninterrupted one has there
    history = fit(ctx, model, epochs, extra, state=gp.variables)
    sparsity = gp.sparsity()
    return StageSummary(pruning=PruningFigures(
        target=rates[-1], sparsity={k: float(v) for k, v in sparsity.items()},
        accuracy=evaluate(model, ctx.data), history=history, cost=cost_summary(ctx, model),
        tflite=_pruned_tflite(ctx, model)))


def prune_stage(ctx) -> StageSummary:
    config, cfg = ctx.config, ctx.config.prune
    stage_cfg = section_train_config(config, "prune")
    if cfg.method == "global":
        return _global_prune_stage(ctx, config, cfg, stage_cfg)
    n_steps = ctx.steps()
    with ctx.strategy.scope():
        model = pruning.prune(ctx.model, target=float(cfg.target),
                              schedule=cfg.sparsity_schedule,
                              steps_per_epoch=n_steps, epochs=int(stage_cfg.epochs))
        loss = base_loss(config)
        if cfg.smoothing_epsilon:
            loss = losses.AdaptiveLabelSmoothing(classifier_layer(model, config),
                                                 epsilon=float(cfg.smoothing_epsilon))
        compile_model(model, config, loss, n_steps, ctx.replicas, stage_cfg)
    extra = pruning.callbacks() + ([loss.callback()] if hasattr(loss, "callback") else [])
    history = fit(ctx, model, int(stage_cfg.epochs), extra)
    ctx.model = model
    return StageSummary(pruning=PruningFigures(
        target=float(cfg.target),
        sparsity={k: float(v) for k, v in pruning.sparsity(model).items()},
        accuracy=evaluate(model, ctx.data), history=history, cost=cost_summary(ctx, model),
        tflite=_pruned_tflite(ctx, model)))
