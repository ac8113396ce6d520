"""The LiteRT runner of a staged early-exit export, and the manifest format it reads.

``mntk.export.to_tflite_staged`` writes a directory of ``stage_<i>.tflite``
files and ``manifest.json`` (``MANIFEST``, format ``FORMAT``). ``StagedRunner``
runs it: each stage with LiteRT, stopping a sample at the first exit whose
confidence passes its threshold, one sample at a time or in batches where only
the samples still running go on to the next stage. ``_Stage`` holds one stage
file's interpreters (one per power-of-two batch size).
"""
import json
import os
import time

import numpy as np

from mntk.early_exit.runner import ExitStatistics
from mntk.export.verify import dequantize_output, quantize_input

__all__ = ["StagedRunner", "MANIFEST", "FORMAT"]

MANIFEST = "manifest.json"
FORMAT = "mntk-staged-early-exit/1"


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
            # Views of the stage's buffers, no copies: a later stage reads its
            # features straight from them, and predict copies the answer row.
            logits, new = stage.run_views(features)
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


    def run_views(self, features):
        """``run`` for one sample without copies: the outputs as views of this
        stage's buffers (float files; int8 ones are dequantized copies). They
        stay valid until the stage runs again, and must be dropped by then:
        LiteRT refuses to invoke an interpreter while a view of it lives."""
        outs = self._invoke(features, 0, 1)
        return outs[0], outs[1:]

    def __call__(self, features):
        return self.run(features)

    def next_inputs(self, features, new):
        return [features[j] if source == "in" else new[j]
                for source, j in self.routes]
