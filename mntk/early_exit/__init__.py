"""Early-exit models: exit heads, joint or frozen training, calibrated
thresholds, per-sample exit on Keras (and on TFLite via
``mntk.export.to_tflite_staged``).

    multi = mntk.early_exit.add_exits(model, at=["block2_out"], head="osi")
    mntk.early_exit.compile_exits(multi, "adam", freeze_backbone=True)
    multi.fit(x, [y] * len(multi.outputs), ...)
    cal = mntk.early_exit.calibrate(multi, (x_val, y_val), max_accuracy_drop=0.005)
    logits, exit_index = mntk.early_exit.EarlyExitRunner(multi, cal).predict(x)
"""
from mntk.early_exit.build import add_exits, exit_fractions
from mntk.early_exit.calibrate import (Calibration, calibrate, confidence,
                                       evaluate, exit_indices)
from mntk.early_exit.graph import build_segments
from mntk.early_exit.heads import MixedPooling2D, linear_head, osi_head, sdn_head
from mntk.early_exit.runner import EarlyExitRunner
from mntk.early_exit.training import (ExitWeightedLoss, ExitWeightRamp,
                                      compile_exits, exit_head_layers, freeze_backbone)

__all__ = [
    "add_exits", "exit_fractions", "compile_exits", "freeze_backbone", "exit_head_layers",
    "ExitWeightedLoss", "ExitWeightRamp", "calibrate", "Calibration",
    "confidence", "exit_indices", "evaluate", "EarlyExitRunner",
    "build_segments", "MixedPooling2D", "osi_head", "sdn_head", "linear_head",
]
