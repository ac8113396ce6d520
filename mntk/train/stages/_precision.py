"""The learned-precision options of the qat8, quantize and finetune stages
(Texas-EIC, adj_quant/scripts/trainer/trainer.py and README:101-204):

- ``quantize.phases``: ``mntk.quantization.PrecisionPhases`` sets alpha (the
  cross-entropy's weight) and beta (the cost term's coefficient) per epoch;
- ``quantize.bits_learning_rate`` / ``bits_tenths``: the bit widths' own Adam
  (``mntk.quantization.BitWidthAdam``), stepped in alternate tenths;
- ``quantize.init_ranges="qat8"``: the qat8 stage writes its 8-bit ranges
  (``quantizer_ranges.json``) and the learned model starts from them
  (``mntk.quantization.transfer``);
- ``finetune.swa``: ``mntk.callbacks.StochasticWeightAveraging``.
"""
import json
import os

import tensorflow as tf

from mntk import callbacks as callbacks_lib
from mntk.quantization import PrecisionPhases
from mntk.quantization.transfer import load_quantizer_ranges, quantizer_ranges
from mntk.train.context import is_chief
from mntk.train.errors import RecipeError

RANGES_FILE = "quantizer_ranges.json"


def phases(cfg):
    """The stage's ``PrecisionPhases``, or None when ``quantize.phases`` is empty."""
    if not cfg.phases:
        return None
    if cfg.scheme != "learned":
        raise RecipeError(f"quantize.phases need quantize.scheme='learned' (got "
                          f"{cfg.scheme!r}): beta weights the learned bits' cost term.")
    return PrecisionPhases([tuple(p) for p in cfg.phases])


def stage_epochs(cfg, stage_cfg, schedule) -> int:
    """The phases' epochs, which must agree with ``quantize.epochs`` if set."""
    if schedule is None:
        return int(stage_cfg.epochs)
    if cfg.epochs is not None and int(cfg.epochs) != schedule.epochs:
        raise RecipeError(f"quantize.epochs={cfg.epochs} but quantize.phases add up to "
                          f"{schedule.epochs} epochs; leave quantize.epochs unset (None) or "
                          "make them agree.")
    return schedule.epochs


def bit_options(cfg, stage_cfg, steps_per_epoch, schedule):
    """``make_optimizer``'s ``bits`` options, or None for a plain optimizer."""
    frozen_phase = schedule is not None and any(not p.train_bits for p in schedule.phases)
    if cfg.bits_learning_rate is None and cfg.bits_tenths == "all" and not frozen_phase:
        return None
    if cfg.scheme != "learned":
        raise RecipeError(f"quantize.bits_learning_rate / bits_tenths need quantize.scheme="
                          f"'learned' (got {cfg.scheme!r}).")
    if cfg.bits_tenths == "alternate" and steps_per_epoch < 10:
        raise RecipeError(f"quantize.bits_tenths='alternate' cuts an epoch in tenths, but an "
                          f"epoch has {steps_per_epoch} steps; use more steps per epoch "
                          "(train.max_steps_per_epoch) or bits_tenths='all'.")
    rate = cfg.bits_learning_rate if cfg.bits_learning_rate is not None \
        else stage_cfg.learning_rate
    return {"bits_learning_rate": float(rate), "steps_per_epoch": int(steps_per_epoch),
            "bits_tenths": cfg.bits_tenths}


def save_ranges(ctx, qat_model) -> str:
    """Write the qat8 model's ranges into its stage folder (chief only)."""
    path = os.path.join(ctx.stage_dir, RANGES_FILE)
    if is_chief():
        with open(path + ".tmp", "w") as f:
            json.dump(quantizer_ranges(qat_model), f)
        os.replace(path + ".tmp", path)
    return path


def load_ranges(ctx, model, kernels=True):
    """Start ``model``'s learned quantizers at the latest qat8 stage's ranges
    (``kernels=False``: activations only). Returns the keys set."""
    stages_dir = os.path.dirname(ctx.stage_dir)
    here = int(os.path.basename(ctx.stage_dir).split("_", 1)[0])
    for k in range(here - 1, -1, -1):
        for entry in sorted(os.listdir(stages_dir)):
            path = os.path.join(stages_dir, entry, RANGES_FILE)
            if entry.startswith(f"{k}_") and os.path.exists(path):
                with open(path) as f:
                    ranges = json.load(f)
                try:
                    return load_quantizer_ranges(model, ranges, kernels=kernels)
                except ValueError as e:
                    raise RecipeError(f"quantize.init_ranges='qat8': {e}") from None
    raise RecipeError("quantize.init_ranges='qat8' needs a 'qat8' stage before 'quantize' "
                      f"in config.stages (no {RANGES_FILE} in {stages_dir}).")


def swa_callback(ctx, model, swa_cfg):
    """``StochasticWeightAveraging`` as ``finetune.swa`` says, or None."""
    if not swa_cfg.enabled:
        return None
    bn_data = None
    if swa_cfg.recompute_bn:
        data = ctx.data
        bn_data = (tf.data.Dataset.from_tensor_slices(data.x_train).batch(
            ctx.global_batch_size(ctx.config.data.batch_size))
            if data.x_train is not None else data.train.map(lambda x, y: x))
    return callbacks_lib.StochasticWeightAveraging(
        start=float(swa_cfg.start), period=float(swa_cfg.period),
        steps_per_epoch=ctx.steps(), recompute_bn=bool(swa_cfg.recompute_bn),
        bn_data=bn_data, bn_steps=ctx.steps(), cycle=int(swa_cfg.cycle), model=model)
