"""Staged TFLite export of an early-exit model, and its LiteRT runner.

A multi-output TFLite file computes every exit for every sample. The staged
export writes one file per segment instead (``mntk.early_exit.build_segments``):

    stage_0.tflite: input          -> [exit_0 logits, features_0]
    stage_1.tflite: features_0     -> [exit_1 logits, features_1]
    ...
    stage_n.tflite: features_{n-1} -> final logits

plus ``manifest.json`` (stage order, signature input/output names, thresholds,
criterion, fallback). ``StagedRunner`` runs the stages with LiteRT, one sample
at a time or in batches where only the samples still running go on to the
next stage, and stops at the first exit whose confidence passes its
threshold, so a device really skips the rest of the network for easy samples.

Staged files rather than one file with a TFLite ``IF`` op: XNNPACK does not
delegate the branch subgraphs of control flow, so such a file runs the
backbone on the builtin kernels (measured 3.8x slower when no sample exits;
issue 16).

This module writes the directory (``to_tflite_staged``); ``StagedRunner``, the
manifest format (``MANIFEST``, ``FORMAT``) and the per-stage interpreters are
``mntk.export.staged_runner``, re-exported here.
"""
import json
import os

import numpy as np

from mntk.compat import ensure_tf_keras
from mntk.export.staged_runner import FORMAT, MANIFEST, StagedRunner

__all__ = ["to_tflite_staged", "StagedRunner", "MANIFEST", "FORMAT"]


def _representative_inputs(data, limit):
    """The first ``limit`` inputs of ``data`` (array, (x, y), or a Dataset)."""
    import tensorflow as tf
    if isinstance(data, tf.data.Dataset):
        xs, seen = [], 0
        for element in data.as_numpy_iterator():
            x = element[0] if isinstance(element, (tuple, list)) else element
            xs.append(np.asarray(x))
            seen += len(xs[-1])
            if seen >= limit:
                break
        if not xs:
            raise ValueError("to_tflite_staged: representative_data is empty.")
        return np.concatenate(xs)[:limit]
    if isinstance(data, (tuple, list)) and len(data) == 2 and np.ndim(data[0]) > 1:
        data = data[0]
    return np.asarray(data)[:limit]


def to_tflite_staged(multi, thresholds, directory, quantize="none",
                     representative_data=None, criterion=None,
                     max_representative_samples=500, progress=True,
                     fallback=None, sparse=None):
    """Writes one TFLite model per segment of ``multi`` and a manifest.

    Args:
      multi: a multi-exit model (``mntk.early_exit.add_exits``).
      thresholds: a ``Calibration`` or one threshold per exit.
      directory: created if missing; gets ``stage_<i>.tflite`` and
        ``manifest.json``.
      quantize: ``"none"``, ``"dynamic"`` or ``"int8"`` (``mntk.export.to_tflite``).
      representative_data: model inputs for int8 calibration (stage i>0 is
        calibrated on the features the earlier stages compute from them).
      criterion: exit criterion when ``thresholds`` is a plain list.
      fallback: "final" or "most_confident" (SDN) for samples no exit
        accepts; default: the Calibration's, else "final".
      sparse: passed to ``to_tflite`` per stage (None: when pruned).

    Returns the manifest (a dict).
    """
    from mntk.early_exit.graph import build_segments, route
    from mntk.early_exit.runner import resolve_thresholds
    from mntk.export.tflite import to_tflite

    ensure_tf_keras(multi)
    segments, structure = build_segments(multi)
    fallback = fallback or getattr(thresholds, "fallback", "final")
    thresholds, criterion = resolve_thresholds(
        thresholds, structure.num_exits, criterion)
    features = None
    if quantize == "int8" and representative_data is not None:
        features = [_representative_inputs(representative_data,
                                           max_representative_samples)]
    os.makedirs(directory, exist_ok=True)
    stages = []
    for i, segment in enumerate(segments):
        rep = None
        if features is not None:
            # Several inputs go one sample at a time: the calibrator resizes
            # them per element, and a short last batch breaks broadcasting ops.
            rep = features[0] if len(features) == 1 else [tuple(
                f[j:j + 1] for f in features) for j in range(len(features[0]))]
        filename = f"stage_{i}.tflite"
        if progress:
            print(f"[mntk.export] stage {i + 1}/{len(segments)}: {segment.name}",
                  flush=True)
        result = to_tflite(segment, os.path.join(directory, filename),
                           quantize=quantize, representative_data=rep,
                           max_representative_samples=max_representative_samples,
                           sparse=sparse, progress=progress)
        names = list(result.output_names) or list(segment.output_names)
        stages.append({
            "file": filename,
            "inputs": list(result.input_names) or list(segment.input_names),
            "exit_output": names[0],
            "feature_outputs": names[1:],
            # Inputs of the next stage: ["in", j] = this stage's input j passed
            # on (a skip over the stage), ["out", k] = feature_outputs[k].
            "next_inputs": ([list(r) for r in structure.routes[i]]
                            if i < structure.num_exits else []),
            "bytes": int(result.bytes),
        })
        if features is not None and i < structure.num_exits:
            outs = segment.predict(features if len(features) > 1 else features[0],
                                   verbose=0, batch_size=64)
            outs = outs if isinstance(outs, list) else [outs]
            features = route(structure.routes[i], features,
                             [np.asarray(o) for o in outs[1:]])
    manifest = {
        "format": FORMAT, "criterion": criterion, "thresholds": thresholds,
        "fallback": fallback,
        "num_exits": structure.num_exits, "quantize": quantize,
        "output_names": list(multi.output_names), "stages": stages,
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
