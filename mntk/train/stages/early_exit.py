"""Stage ``early_exit``: exit heads on the trained model (OSI-AI's recipe).

The heads are trained with the backbone frozen, thresholds calibrated on the
validation split (``early_exit.target``) or fixed (``early_exit.threshold``),
and the multi-exit model run with per-sample exit on the test split in Keras
and as staged TFLite. ``ctx.model`` stays the backbone; the multi-exit model
is the stage's ``multi.keras`` (the ``prune_exits`` stage goes on from it).
The head training and the exit figures are shared with ``prune_exits``.
"""
import functools
import importlib
import os

import numpy as np

from mntk import cost, early_exit, export, losses, models, regularizers
from mntk.train.evaluation import predict_outputs
from mntk.train.objectives import base_loss
from mntk.train.optim import make_optimizer
from mntk.train.fit import fit
from mntk.train.schema import section_train_config
from mntk.train.summary import EarlyExitFigures, StagedTfliteFigures, StageSummary


def early_exit_stage(ctx) -> StageSummary:
    config = ctx.config
    cfg = config.early_exit
    # freeze_backbone flips the shared backbone layers; later stages (prune,
    # quantize) must train them again.
    trainable = [(layer, layer.trainable) for layer in ctx.model.layers]
    head = cfg.head
    if head == "osi_entry":   # the OSI-AI entry's own head: 136 wide, ghost BN
        head = models.osi_exit_head()
    elif head == "osi" and cfg.head_bn_momentum is not None:
        head = functools.partial(early_exit.osi_head, bn_momentum=float(cfg.head_bn_momentum))
    stage_cfg = section_train_config(config, "early_exit")
    with ctx.strategy.scope():
        multi = early_exit.add_exits(ctx.model, at=list(cfg.at), head=head)
        compile_head_training(ctx, multi, stage_cfg)
    fit(ctx, multi, int(stage_cfg.epochs), [], mix=exit_mix(config))
    for layer, flag in trainable:
        layer.trainable = flag
    return StageSummary(early_exit=exit_figures(ctx, multi))


def exit_mix(config):
    """The batch mixing of the head-training fits: ``early_exit.mix``, else
    ``data.mix`` (OSI-AI trained its exit on unmixed images: 'none')."""
    return config.early_exit.mix


def compile_head_training(ctx, multi, stage_cfg) -> None:
    """Compile ``multi`` to train its exit heads as ``early_exit`` says: the
    loss (``early_exit.loss`` and ``weight_gradient``; the final output's
    with ``early_exit.label_smoothing`` if set), the frozen backbone (``freeze_backbone``, with
    ``backbone_bn_updates``), and the stage's coupled L2 (``l2``, ``l2_on``)
    on the variables that train (the heads', and BN's with BN updates)."""
    config, cfg = ctx.config, ctx.config.early_exit
    final = base_loss(config, label_smoothing=cfg.label_smoothing)
    head_loss = losses.ConfidenceWeighted(weight_gradient=bool(cfg.weight_gradient)) \
        if cfg.loss == "confidence_weighted" else final
    early_exit.compile_exits(
        multi, make_optimizer(stage_cfg, ctx.steps(), ctx.replicas),
        loss=[head_loss] * (len(multi.outputs) - 1) + [final],
        freeze_backbone=bool(cfg.freeze_backbone), bn_trainable=bool(cfg.backbone_bn_updates))
    if float(stage_cfg.l2 or 0.0) > 0:
        # after compile_exits: the frozen backbone's kernels are not decayed
        regularizers.apply_l2(multi, float(stage_cfg.l2), on=str(stage_cfg.l2_on))


def exit_figures(ctx, multi) -> EarlyExitFigures:
    """Thresholds (fixed or calibrated on validation), per-sample exit on the
    test split in Keras and as staged TFLite, the mean cost; writes
    ``calibration.json``, ``staged_tflite/`` and the stage's ``multi.keras``."""
    data, cfg = ctx.data, ctx.config.early_exit
    target = {k: float(v) for k, v in cfg.target.items() if v is not None}
    limit = int(cfg.max_examples) or None
    x_test, y_test = data.arrays("test", limit)
    if cfg.threshold is not None:
        cal = _fixed_threshold(multi, data.arrays("validation", limit), cfg)
    else:
        cal = early_exit.calibrate(multi, data.arrays("validation", limit),
                                   criterion=cfg.criterion, curve=True, verbose=0, **target)
    for folder in (ctx.stage_dir, ctx.workdir):
        cal.to_json(os.path.join(folder, "calibration.json"))
    runner = early_exit.EarlyExitRunner(multi, cal)
    logits, exits = runner.predict(x_test)
    final = predict_outputs(multi, x_test)[-1]
    rates = [float(r) for r in runner.exit_rates]
    mean = cost.estimate(multi, exit_rates=rates)
    backbone_ops = cost.estimate(ctx.model).ops
    staged_dir = os.path.join(ctx.workdir, "staged_tflite")
    export.to_tflite_staged(multi, cal, staged_dir, quantize="none", progress=False)
    staged_logits, staged_exits = export.StagedRunner(staged_dir).predict(x_test)
    multi.save(os.path.join(ctx.stage_dir, "multi.keras"))
    accuracy = float(np.mean(np.argmax(logits, -1) == y_test))
    final_accuracy = float(np.mean(np.argmax(final, -1) == y_test))
    return EarlyExitFigures(
        at=list(cfg.at), head=cfg.head, criterion=cal.criterion,
        thresholds=[float(t) for t in cal.thresholds], calibration_target=target,
        exit_rate=float(np.mean(exits < len(multi.outputs) - 1)), exit_rates=rates,
        accuracy=accuracy, final_accuracy=final_accuracy,
        accuracy_drop=final_accuracy - accuracy,
        mean_ops=float(mean.ops), backbone_ops=float(backbone_ops),
        ops_saved=float(1.0 - mean.ops / backbone_ops),
        staged_tflite=StagedTfliteFigures(
            directory=os.path.relpath(staged_dir, ctx.workdir),
            agreement=float(np.mean(np.argmax(staged_logits, -1) == np.argmax(logits, -1))),
            same_exits=float(np.mean(staged_exits == exits))))


def _fixed_threshold(multi, validation, cfg):
    """A Calibration for the fixed ``early_exit.threshold`` (OSI-AI's 0.85), with
    what it achieves on the validation split."""
    # the module (mntk.early_exit.calibrate is also the function's name)
    calibrate_lib = importlib.import_module("mntk.early_exit.calibrate")
    x, y = validation
    outputs = predict_outputs(multi, x)
    exit_ops, baseline_ops = calibrate_lib._ops(multi)
    thresholds = [float(cfg.threshold)] * (len(outputs) - 1)
    result = calibrate_lib.evaluate(outputs, y, thresholds, cfg.criterion, exit_ops)
    final_accuracy = float(np.mean(outputs[-1].argmax(-1) == y))
    return calibrate_lib.Calibration(
        criterion=cfg.criterion, thresholds=thresholds, exit_rates=result["exit_rates"],
        accuracy=result["accuracy"], final_accuracy=final_accuracy, exit_ops=exit_ops,
        baseline_ops=baseline_ops, mean_ops=result["mean_ops"],
        ops_saved=1.0 - result["mean_ops"] / baseline_ops, num_samples=int(len(y)),
        target={"threshold": float(cfg.threshold)})
