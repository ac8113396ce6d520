"""Stage ``export``: TFLite float / dynamic / int8 files of the current model
(pruning wrappers stripped), each verified against Keras with LiteRT."""
import os

from mntk import export, pruning
from mntk.wrapped import is_pruned
from mntk.train.evaluation import tflite_figures, verify_examples
from mntk.train.summary import StageSummary

QUANTIZE = {"float": "none", "dynamic": "dynamic", "int8": "int8"}


def export_stage(ctx) -> StageSummary:
    config, data, model = ctx.config, ctx.data, ctx.model
    if is_pruned(model):
        model = pruning.strip(model)
    out = {}
    rep = data.arrays("train", int(config.export.representative_examples))[0]
    test = data.arrays("test", verify_examples(config))
    for kind in config.export.kinds:
        path = os.path.join(ctx.workdir, f"model_{kind}.tflite")
        result = export.to_tflite(model, path, quantize=QUANTIZE[kind],
                                  representative_data=rep if kind == "int8" else None)
        # sparse=None: a pruned model's file is sparse-encoded (or says why not).
        out[kind] = tflite_figures(path, ctx.workdir, result.bytes,
                                   export.verify(result, model, test), result)
    return StageSummary(tflite=out)
