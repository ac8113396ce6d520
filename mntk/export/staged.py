"""Staged TFLite export of an early-exit model, and its LiteRT runner.

A multi-output TFLite file computes every exit for every sample. The staged
export writes one file per segment instead (``mntk.early_exit.build_segments``):

    stage_0.tflite: input          -> [exit_0 logits, features_0]
    stage_1.tflite: features_0     -> [exit_1 logits, features_1]
    ...
    stage_n.tflite: features_{n-1} -> final logits

plus ``manifest.json`` (stage order, signature input/output names, thresholds,
criterion). ``StagedRunner`` runs the stages with LiteRT one sample at a time
and stops at the first exit whose confidence passes its threshold, so a device
really skips the rest of the network for easy samples.
"""
import json
import os
import time

import numpy as np

from mntk.compat import ensure_tf_keras
from mntk.early_exit.runner import ExitStatistics

__all__ = ["to_tflite_staged", "StagedRunner", "MANIFEST", "FORMAT"]

MANIFEST = "manifest.json"
FORMAT = "mntk-staged-early-exit/1"


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
                     max_representative_samples=500, progress=True):
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

    Returns the manifest (a dict).
    """
    from mntk.early_exit.graph import build_segments, route
    from mntk.early_exit.runner import resolve_thresholds
    from mntk.export.tflite import to_tflite

    ensure_tf_keras(multi)
    segments, structure = build_segments(multi)
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
                           progress=progress)
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
        "num_exits": structure.num_exits, "quantize": quantize,
        "output_names": list(multi.output_names), "stages": stages,
    }
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


class StagedRunner(ExitStatistics):
    """Runs a ``to_tflite_staged`` directory with LiteRT, sample by sample.

    ``predict(x)`` returns ``(logits, exit_index)`` like
    ``mntk.early_exit.EarlyExitRunner``; afterwards ``exit_histogram``,
    ``exit_rates``, ``latencies_ms`` (per sample, all its stages) and
    ``latency_stats()`` describe the run.
    """

    def __init__(self, directory, num_threads=None):
        from mntk.early_exit.calibrate import to_score
        from mntk.early_exit.runner import resolve_thresholds

        path = os.path.join(directory, MANIFEST)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"StagedRunner: no {MANIFEST} in {directory!r}; write the "
                "directory with mntk.export.to_tflite_staged(...).")
        with open(path) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"StagedRunner: {path} has format "
                             f"{self.manifest.get('format')!r}, expected {FORMAT!r}.")
        self.num_exits = int(self.manifest["num_exits"])
        self.thresholds, self.criterion = resolve_thresholds(
            self.manifest["thresholds"], self.num_exits, self.manifest["criterion"])
        self._score_thresholds = to_score(self.thresholds, self.criterion)
        self.stages = [_Stage(directory, stage, num_threads)
                       for stage in self.manifest["stages"]]
        self.exit_histogram = np.zeros(self.num_exits + 1, dtype=np.int64)
        self.latencies_ms = np.zeros(0)
        self.exit_index = np.zeros(0, dtype=np.int64)

    def _run_sample(self, x):
        from mntk.early_exit.calibrate import confidence, to_score
        features = [x]
        for i, stage in enumerate(self.stages):
            logits, new = stage(features)
            if i == self.num_exits or (
                    to_score(confidence(logits, self.criterion), self.criterion)[0]
                    >= self._score_thresholds[i]):
                return logits[0], i
            features = stage.next_inputs(features, new)
        raise AssertionError("the last stage always returns")

    def _warm_up(self, sample):
        # The first invoke of each interpreter sets up its delegate; keep that
        # out of the measured latencies by running every stage once.
        features = [sample]
        for stage in self.stages:
            _, new = stage(features)
            features = stage.next_inputs(features, new)
        self._warm = True

    def predict(self, x):
        """``(logits, exit_index)`` for every sample of ``x``, one at a time."""
        x = np.asarray(x, np.float32)
        if len(x) and not getattr(self, "_warm", False):
            self._warm_up(x[:1])
        logits, exits, latency = [], [], []
        for j in range(len(x)):
            start = time.perf_counter()
            lo, ex = self._run_sample(x[j:j + 1])
            latency.append((time.perf_counter() - start) * 1e3)
            logits.append(lo)
            exits.append(ex)
        self._record(exits, latency)
        return np.stack(logits), self.exit_index


class _Stage:
    """One stage file on a LiteRT interpreter, fed through its tensor indices
    (cheaper per call than a signature runner, which matters per sample)."""

    def __init__(self, directory, stage, num_threads):
        from ai_edge_litert.interpreter import Interpreter
        self.file = stage["file"]
        self.interpreter = Interpreter(
            model_path=os.path.join(directory, stage["file"]),
            num_threads=num_threads)
        signatures = list(self.interpreter.get_signature_list())
        runner = self.interpreter.get_signature_runner(signatures[0])
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        del runner  # it holds views of the tensors; resizing needs them gone
        names = stage["inputs"]
        if set(names) != set(inputs):
            if len(names) == len(inputs) == 1:
                names = list(inputs)
            else:
                raise ValueError(
                    f"StagedRunner: {self.file} has inputs {sorted(inputs)}, the "
                    f"manifest says {names}.")
        missing = [n for n in [stage["exit_output"], *stage["feature_outputs"]]
                   if n not in outputs]
        if missing:
            raise ValueError(f"StagedRunner: {self.file} has no outputs {missing}; "
                             f"it has {sorted(outputs)}.")
        self.inputs = [inputs[n] for n in names]
        self.exit_output = outputs[stage["exit_output"]]
        self.feature_outputs = [outputs[n] for n in stage["feature_outputs"]]
        self.routes = stage["next_inputs"]
        self.interpreter.allocate_tensors()
        self._shapes = {}  # input tensor index -> shape it is allocated for

    def __call__(self, features):
        """``(exit logits, new feature outputs)`` as float arrays."""
        from mntk.export.verify import dequantize_output, quantize_input
        interpreter = self.interpreter
        for details, value in zip(self.inputs, features):
            value = quantize_input(np.asarray(value, np.float32), details)
            if self._shapes.get(details["index"]) != value.shape:
                interpreter.resize_tensor_input(details["index"], value.shape)
                interpreter.allocate_tensors()
                self._shapes[details["index"]] = value.shape
            interpreter.set_tensor(details["index"], value)
        interpreter.invoke()
        logits = dequantize_output(interpreter.get_tensor(self.exit_output["index"]),
                                   self.exit_output)
        new = [dequantize_output(interpreter.get_tensor(d["index"]), d)
               for d in self.feature_outputs]
        return logits, new

    def next_inputs(self, features, new):
        return [features[j] if source == "in" else new[j]
                for source, j in self.routes]
