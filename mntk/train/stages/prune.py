"""Stage ``prune``: magnitude pruning (tfmot) of the current model to
``prune.target`` (Zhu & Gupta 2017 polynomial schedule by default).

``ctx.model`` stays wrapped so a following ``quantize`` stage keeps the
zeros; ``export`` strips the wrappers."""
from mntk import losses, pruning
from mntk.train.evaluation import cost_summary, evaluate
from mntk.train.fit import fit
from mntk.train.objectives import base_loss, classifier_layer, compile_model
from mntk.train.schema import section_train_config
from mntk.train.summary import PruningFigures, StageSummary


def prune_stage(ctx) -> StageSummary:
    config, cfg = ctx.config, ctx.config.prune
    stage_cfg = section_train_config(config, "prune")
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
        accuracy=evaluate(model, ctx.data), history=history, cost=cost_summary(ctx, model)))
