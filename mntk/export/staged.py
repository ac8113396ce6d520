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
"""
import json
import os
import time

import numpy as np

from mntk.compat import ensure_tf_keras
from mntk.early_exit.runner import ExitStatistics
from mntk.export.verify import dequantize_output, quantize_input

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


class StagedRunner(ExitStatistics):
    """Runs a ``to_tflite_staged`` directory with LiteRT.

    ``predict(x, batch_size=1)`` returns ``(logits, exit_index)`` like
    ``mntk.early_exit.EarlyExitRunner``: ``exit_index`` is the stage where the
    sample stopped (``num_exits`` = it ran to the end; what ``mntk.cost``
    counts), ``answer_index`` the head whose logits were returned (different
    only with ``fallback="most_confident"``). Afterwards ``exit_histogram``,
    ``exit_rates``, ``latencies_ms`` and ``latency_stats()`` describe the run.

    Batched (``batch_size > 1``): stage 0 runs the whole batch; only the
    samples that have not exited go on to the next stage, so a device computes
    each later stage for the remaining fraction only. ``latencies_ms`` is then
    per sample: its batch's wall time divided by the batch size.

    Per-call overhead is kept out of the loop: each stage holds one LiteRT
    interpreter per power-of-two batch size, created and allocated the first
    time that size is needed (XNNPACK re-initializes on every input resize,
    so a single interpreter resized to each remaining count would pay that on
    every call); ``m`` remaining samples run as the binary decomposition of
    ``m`` (e.g. 37 = 32 + 4 + 1). Inputs are written straight into the
    interpreter's input buffers and float outputs are read as views; nothing
    per sample is allocated in Python.

    Args:
      directory: written by ``to_tflite_staged``.
      num_threads: LiteRT threads per interpreter (deployment: 1 on a phone core).
      fallback: ``"final"`` (a sample no exit accepted answers with the final
        output) or ``"most_confident"`` (SDN, Kaya et al. ICML 2019: the most
        confident of all its heads). Default: the manifest's.
    """

    def __init__(self, directory, num_threads=None, fallback=None):
        from mntk.early_exit.calibrate import FALLBACKS, to_score
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
        self.fallback = fallback or self.manifest.get("fallback", "final")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"StagedRunner: fallback={self.fallback!r} is not one "
                             f"of {FALLBACKS}.")
        self._score_thresholds = np.asarray(
            to_score(self.thresholds, self.criterion), np.float64)
        self.stages = [_Stage(directory, stage, num_threads)
                       for stage in self.manifest["stages"]]
        self.exit_histogram = np.zeros(self.num_exits + 1, dtype=np.int64)
        self.latencies_ms = np.zeros(0)
        self.exit_index = np.zeros(0, dtype=np.int64)
        self.answer_index = np.zeros(0, dtype=np.int64)

    def _scores(self, logits):
        if self.criterion == "max_softmax":
            # max_k softmax(z)_k = 1 / sum_k exp(z_k - max z): one exp pass,
            # in float64 like mntk.early_exit.calibrate.confidence.
            z = logits.astype(np.float64)
            return 1.0 / np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1)
        from mntk.early_exit.calibrate import confidence, to_score
        return to_score(confidence(logits, self.criterion), self.criterion)

    def _run_one(self, x):
        """One sample (batch 1): ``(logits row, stop stage, answer head)``."""
        features = [x]
        best, best_logits, answer = -np.inf, None, self.num_exits
        for i, stage in enumerate(self.stages):
            logits, new = stage.run(features)
            if i == self.num_exits and self.fallback == "final":
                return logits[0], i, i
            score = float(self._scores(logits)[0])
            if i < self.num_exits and score >= self._score_thresholds[i]:
                return logits[0], i, i
            if score > best:
                best, best_logits, answer = score, logits[0], i
            if i == self.num_exits:
                return best_logits, i, answer
            features = stage.next_inputs(features, new)
        raise AssertionError("the last stage always returns")

    def _run_batch(self, x, logits_out, exits, answers):
        """Runs ``x`` (n samples) through the stages; fills the outputs."""
        n = len(x)
        active = np.arange(n)
        features = [x]
        best_score = np.full(n, -np.inf) if self.fallback != "final" else None
        for i, stage in enumerate(self.stages):
            logits, new = stage.run(features)
            last = i == self.num_exits
            score = self._scores(logits) if (not last or best_score is not None) \
                else None
            done = (np.ones(len(active), bool) if last
                    else score >= self._score_thresholds[i])
            if best_score is not None:
                # SDN fallback: remember each sample's most confident head.
                better = score > best_score[active]
                if not last:
                    better &= ~done
                take = active[better | done] if not last else active[better]
                rows = (better | done) if not last else better
                logits_out[take] = logits[rows]
                answers[take] = i
                best_score[active[better]] = score[better]
            else:
                logits_out[active[done]] = logits[done]
                answers[active[done]] = i
            exits[active[done]] = i
            if last or done.all():
                return
            if done.any():
                keep = np.flatnonzero(~done)
                features = [f[keep] for f in stage.next_inputs(features, new)]
                active = active[keep]
            else:
                features = stage.next_inputs(features, new)
        raise AssertionError("the last stage always returns")

    def _warm_up(self, x):
        # The first invoke of each interpreter sets up its delegate; keep that
        # out of the measured latencies by running every stage once per size.
        features = [x]
        for stage in self.stages:
            _, new = stage.run(features)
            features = stage.next_inputs(features, new)

    def predict(self, x, batch_size=1):
        """``(logits, exit_index)`` of every sample of ``x``.

        ``batch_size=1`` runs sample by sample (per-sample latencies, what a
        device serving one request at a time sees); larger batches send only
        the remaining samples on to each next stage.
        """
        x = np.ascontiguousarray(x, np.float32)
        n = len(x)
        out_shape = self.stages[-1].exit_output["shape"][1:]
        logits_out = np.zeros((n,) + tuple(out_shape), np.float32)
        exits = np.full(n, self.num_exits, dtype=np.int64)
        answers = np.full(n, self.num_exits, dtype=np.int64)
        latency = np.zeros(n)
        batch_size = max(1, int(batch_size))
        warm = self.__dict__.setdefault("_warm_sizes", set())
        size = 1
        while n and size <= min(batch_size, n):
            # Every interpreter a batch may need, created outside the timing.
            if size not in warm:
                self._warm_up(x[:size])
                warm.add(size)
            size *= 2
        clock = time.perf_counter
        if batch_size == 1:
            for j in range(n):
                t0 = clock()
                logits_out[j], exits[j], answers[j] = self._run_one(x[j:j + 1])
                latency[j] = (clock() - t0) * 1e3
            self._record(exits, latency)
            self.answer_index = answers
            return logits_out, self.exit_index
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            t0 = clock()
            self._run_batch(x[start:stop], logits_out[start:stop],
                            exits[start:stop], answers[start:stop])
            latency[start:stop] = (clock() - t0) * 1e3 / (stop - start)
        self._record(exits, latency)
        self.answer_index = answers
        return logits_out, self.exit_index


def _powers_of_two(m):
    """The binary decomposition of ``m``, largest part first (37 -> 32, 4, 1)."""
    parts, bit = [], 1 << max(m.bit_length() - 1, 0)
    while m:
        if m & bit:
            parts.append(bit)
            m -= bit
        bit >>= 1
    return parts


class _Stage:
    """One stage file: a LiteRT interpreter per power-of-two batch size, fed
    through tensor indices (cheaper per call than a signature runner)."""

    def __init__(self, directory, stage, num_threads):
        from ai_edge_litert.interpreter import Interpreter
        self.file = stage["file"]
        self.path = os.path.join(directory, stage["file"])
        self.num_threads = num_threads
        interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        signatures = list(interpreter.get_signature_list())
        runner = interpreter.get_signature_runner(signatures[0])
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
        self._outputs = [self.exit_output, *self.feature_outputs]
        self._float_in = all(d["dtype"] == np.float32 for d in self.inputs)
        self._float_out = all(d["dtype"] == np.float32 for d in self._outputs)
        self._sized = {}  # batch size -> (interpreter, input views, output views)
        self._first = interpreter

    def _for_size(self, size):
        entry = self._sized.get(size)
        if entry is not None:
            return entry
        from ai_edge_litert.interpreter import Interpreter
        interpreter, self._first = self._first, None
        if interpreter is None:
            interpreter = Interpreter(model_path=self.path,
                                      num_threads=self.num_threads)
        for d in self.inputs:
            interpreter.resize_tensor_input(
                d["index"], [size] + list(d["shape"][1:]))
        interpreter.allocate_tensors()
        # Views of the tensor buffers stay valid: this interpreter is never
        # resized again.
        entry = (interpreter, [interpreter.tensor(d["index"]) for d in self.inputs],
                 [interpreter.tensor(d["index"]) for d in self._outputs])
        self._sized[size] = entry
        return entry

    def _invoke(self, features, lo, hi):
        interpreter, in_views, out_views = self._for_size(hi - lo)
        for d, view, value in zip(self.inputs, in_views, features):
            view()[...] = (value[lo:hi] if self._float_in
                           else quantize_input(value[lo:hi], d))
        interpreter.invoke()
        if self._float_out:
            return [view() for view in out_views]
        return [dequantize_output(view(), d) for d, view in zip(self._outputs, out_views)]

    def run(self, features):
        """``(exit logits, new feature outputs)`` as float arrays (copies)."""
        m = len(features[0])
        if m & (m - 1) == 0:  # a power of two: one invoke
            outs = [np.array(o) for o in self._invoke(features, 0, m)]
        else:
            outs, lo = None, 0
            for size in _powers_of_two(m):
                got = self._invoke(features, lo, lo + size)
                if outs is None:
                    outs = [np.empty((m,) + o.shape[1:], np.float32) for o in got]
                for acc, o in zip(outs, got):
                    acc[lo:lo + size] = o
                lo += size
        return outs[0], outs[1:]


    def __call__(self, features):
        return self.run(features)

    def next_inputs(self, features, new):
        return [features[j] if source == "in" else new[j]
                for source, j in self.routes]
