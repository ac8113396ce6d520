"""The figures a stage reports: test accuracy, MicroNet cost, TFLite parity."""
import os
from typing import Any

import numpy as np
import tensorflow as tf

from mntk import cost
from mntk.train.context import write_json
from mntk.train.summary import CostFigures, TfliteFigures


#: in-memory splits up to this many examples are run by eager calls of the
#: model: tracing ``predict``'s function for a new model (every stage has one)
#: costs more than a few eager batches (the Texas smoke run, three quantized
#: models on 360 digits: 96 -> 80 CPU-s on one core); bigger splits and
#: distributed models go through ``predict``
EAGER_EXAMPLES = 4096


def predict_outputs(model, x: np.ndarray, batch_size: int = 256) -> list:
    """Every output of ``model`` on the arrays ``x`` (inference mode), a list
    of numpy arrays, final output last."""
    if len(x) <= EAGER_EXAMPLES and model.distribute_strategy.num_replicas_in_sync == 1 \
            and not tf.distribute.has_strategy():
        batches = [model(x[i:i + batch_size], training=False)
                   for i in range(0, len(x), batch_size)]
        batches = [b if isinstance(b, (list, tuple)) else [b] for b in batches]
        return [np.concatenate([np.asarray(b[k]) for b in batches])
                for k in range(len(batches[0]))]
    out = model.predict(x, batch_size=batch_size, verbose=0)
    return [np.asarray(o) for o in out] if isinstance(out, list) else [np.asarray(out)]


def evaluate(model, data) -> float:
    """Top-1 accuracy of the (last) output on the test split."""
    if data.x_test is not None:
        out = predict_outputs(model, data.x_test)
        labels = data.y_test
    else:
        # predict + labels rather than model.evaluate: the compiled metrics may
        # expect distillation targets, the test split has plain labels.
        out = model.predict(data.test.map(lambda x, y: x), verbose=0)
        labels = np.concatenate([np.asarray(y) for _, y in data.test])
    if isinstance(out, list):
        out = out[-1]
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    return float(np.mean(np.argmax(out, -1) == labels))


def cost_summary(ctx, model, **estimate_kwargs) -> CostFigures:
    """The model's MicroNet cost (written to ``cost.json``) for the summary."""
    task, freebie = ctx.config.cost.task, bool(ctx.config.cost.freebie)
    report = cost.estimate(model, task=task, freebie=freebie, **estimate_kwargs)
    write_json(os.path.join(ctx.stage_dir, "cost.json"), report.to_json())
    write_json(os.path.join(ctx.workdir, "cost.json"), report.to_json())
    return CostFigures(params=report.params, ops=report.ops, score=report.score,
                       param_bits=report.param_bits, task=task, freebie=freebie,
                       note=ctx.config.cost.note or None)


def tflite_figures(path: str, workdir: str, nbytes: int, check,
                   result=None) -> TfliteFigures:
    """A TFLite file's size and its ``mntk.export.verify`` parity (final output);
    with ``to_tflite``'s ``result``, whether it is sparse-encoded and why not."""
    return TfliteFigures(path=os.path.relpath(path, workdir), bytes=int(nbytes),
                         agreement=check.agreement, max_abs_diff=check.max_abs_diff,
                         accuracy_tflite=check.accuracy_tflite,
                         accuracy_keras=check.accuracy_keras,
                         sparse=bool(getattr(result, "sparse", False)),
                         sparse_note=getattr(result, "sparse_note", "") or None)


def verify_examples(config) -> Any:
    """``export.verify_examples`` as ``arrays``' limit (0: the whole split)."""
    return int(config.export.verify_examples) or None
