"""Per-sample early exit on Keras: compute each sample only as far as needed.

The multi-exit model is cut into segment sub-models (``graph.build_segments``)
that share its layers: ``input -> [exit_0, features_0]``, ``features_0 ->
[exit_1, features_1]``, ..., ``features_{n-1} -> final``. A batch runs segment
0; the samples whose exit passes its threshold are done, only the others go on
to the next segment.
"""
import collections
import time

import numpy as np
import tensorflow as tf

from mntk.early_exit import graph
from mntk.early_exit.calibrate import (Calibration, confidence, to_score,
                                       _check_criterion, _check_fallback)

__all__ = ["EarlyExitRunner", "resolve_thresholds"]


def resolve_thresholds(thresholds, num_exits, criterion=None):
    """``(thresholds list, criterion)`` from a ``Calibration`` or a sequence."""
    if isinstance(thresholds, Calibration):
        if criterion is not None and criterion != thresholds.criterion:
            raise ValueError(
                f"criterion={criterion!r} differs from the calibration's "
                f"{thresholds.criterion!r}; leave criterion out.")
        criterion, thresholds = thresholds.criterion, thresholds.thresholds
    criterion = criterion or "max_softmax"
    _check_criterion(criterion)
    if np.ndim(thresholds) == 0:
        raise ValueError(
            f"thresholds {thresholds!r}: give one threshold per exit "
            f"({num_exits}) as a list, or a Calibration.")
    thresholds = [float(t) for t in thresholds]
    if len(thresholds) != num_exits:
        raise ValueError(
            f"Got {len(thresholds)} thresholds for a model with {num_exits} "
            f"exit(s); give exactly one per exit (the final output needs none).")
    if any(np.isnan(thresholds)):
        raise ValueError(f"thresholds {thresholds} contain NaN.")
    return thresholds, criterion


LatencyStats = collections.namedtuple(
    "LatencyStats", ["mean_ms", "p50_ms", "p90_ms", "p99_ms", "per_exit_mean_ms"])


class ExitStatistics:
    """Exit histogram, rates and latency statistics of the last ``predict``
    (shared by the Keras runner and ``mntk.export.StagedRunner``)."""

    num_exits = 0
    exit_index = np.zeros(0, dtype=np.int64)
    latencies_ms = np.zeros(0)

    def _record(self, exit_index, latencies_ms):
        self.exit_index = np.asarray(exit_index, dtype=np.int64)
        self.latencies_ms = np.asarray(latencies_ms, dtype=np.float64)
        self.exit_histogram = np.bincount(self.exit_index, minlength=self.num_exits + 1)

    @property
    def exit_rates(self):
        """Fraction of the last ``predict``'s samples leaving at each output."""
        total = self.exit_histogram.sum()
        return (self.exit_histogram / total).tolist() if total else None

    def latency_stats(self):
        """Latency percentiles (ms) of the last ``predict`` and mean per exit."""
        lat = self.latencies_ms
        if not len(lat):
            raise RuntimeError("latency_stats: call predict first.")
        per_exit = [float(lat[self.exit_index == i].mean())
                    if np.any(self.exit_index == i) else None
                    for i in range(self.num_exits + 1)]
        return LatencyStats(float(lat.mean()), *map(float, np.percentile(
            lat, [50, 90, 99])), per_exit)


class EarlyExitRunner(ExitStatistics):
    """Runs a multi-exit model with real per-sample early termination.

    Args:
      multi: model from ``add_exits`` (outputs ``[exit_0, ..., final]``).
      thresholds: a ``Calibration`` or one threshold per exit.
      criterion: ``"max_softmax"`` or ``"entropy"`` (from the Calibration if
        one is given).
      fallback: ``"final"`` (a sample no exit accepts answers with the final
        output) or ``"most_confident"`` (SDN: its most confident head over
        all outputs, the first on ties); default: the Calibration's, else
        ``"final"``.

    ``predict`` returns the logits each sample answers with and
    ``exit_index``, the output where it stopped (what ``mntk.cost`` counts);
    ``answer_index`` is the head whose logits were returned.

    After ``predict``: ``exit_histogram`` (samples per output),
    ``exit_rates``, ``latencies_ms`` (per sample: time from its batch's start
    until its exit segment finished) and ``latency_stats()``.
    """

    def __init__(self, multi, thresholds, criterion=None, fallback=None):
        self.multi = multi
        self.fallback = fallback or getattr(thresholds, "fallback", "final")
        _check_fallback(self.fallback)
        self.segments, structure = graph.build_segments(multi)
        self.num_exits = structure.num_exits
        self.routes = structure.routes
        self.thresholds, self.criterion = resolve_thresholds(
            thresholds, self.num_exits, criterion)
        self._score_thresholds = to_score(self.thresholds, self.criterion)
        # One trace per segment: the batch dimension is left unknown.
        self._forward = [
            tf.function(lambda inputs, seg=seg: seg(inputs, training=False),
                        input_signature=[[
                            tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype)
                            for t in seg.inputs]])
            for seg in self.segments]
        self._warm = False
        self.exit_histogram = np.zeros(self.num_exits + 1, dtype=np.int64)
        self.latencies_ms = np.zeros(0)
        self.exit_index = np.zeros(0, dtype=np.int64)
        self.answer_index = np.zeros(0, dtype=np.int64)

    def _run_batch(self, x):
        n = len(x)
        logits_out, exits = None, np.full(n, self.num_exits, dtype=np.int64)
        answers = np.full(n, self.num_exits, dtype=np.int64)
        best = np.full(n, -np.inf) if self.fallback != "final" else None
        latency = np.zeros(n)
        active = np.arange(n)
        features = [tf.convert_to_tensor(x)]
        start = time.perf_counter()
        for i, forward in enumerate(self._forward):
            outs = forward(features)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            logits = outs[0].numpy()
            if logits_out is None:
                logits_out = np.zeros((n,) + logits.shape[1:], logits.dtype)
            last = i == self.num_exits
            score = (to_score(confidence(logits, self.criterion), self.criterion)
                     if not last or best is not None else None)
            done = (np.ones(len(active), dtype=bool) if last
                    else score >= self._score_thresholds[i])
            finished = active[done]
            if best is None:
                logits_out[finished] = logits[done]
                answers[finished] = i
            else:
                # SDN: keep each sample's most confident head so far; one that
                # exits answers with the head it exits at.
                better = score > best[active]
                rows = better if last else (better | done)
                logits_out[active[rows]] = logits[rows]
                answers[active[rows]] = i
                best[active[better]] = score[better]
            exits[finished] = i
            latency[finished] = (time.perf_counter() - start) * 1e3
            if done.all():
                break
            keep = np.flatnonzero(~done)
            features = [tf.gather(f, keep) for f in graph.route(
                self.routes[i], features, list(outs[1:]))]
            active = active[keep]
        self._answers.append(answers)
        return logits_out, exits, latency

    def predict(self, x, batch_size=256):
        """Returns ``(logits, exit_index)``: the logits of the output each
        sample left at, and that output's index (``num_exits`` = final)."""
        x = np.asarray(x, dtype=self.segments[0].inputs[0].dtype.as_numpy_dtype)
        if not self._warm and len(x):
            # Trace every segment once outside the timed runs: thresholds of
            # -inf would leave later segments untraced, so call them directly.
            features = [tf.convert_to_tensor(x[:1])]
            for i, forward in enumerate(self._forward[:-1]):
                outs = forward(features)
                outs = outs if isinstance(outs, (list, tuple)) else [outs]
                features = graph.route(self.routes[i], features, list(outs[1:]))
            self._forward[-1](features)
            self._warm = True
        logits, exits, latency = [], [], []
        self._answers = []
        for i in range(0, len(x), batch_size):
            lo, ex, la = self._run_batch(x[i:i + batch_size])
            logits.append(lo)
            exits.append(ex)
            latency.append(la)
        self._record(np.concatenate(exits), np.concatenate(latency))
        self.answer_index = np.concatenate(self._answers)
        return np.concatenate(logits), self.exit_index

    def mean_cost(self, **estimate_kwargs):
        """``mntk.cost.estimate`` of the model at the measured exit rates."""
        from mntk import cost
        if self.exit_rates is None:
            raise RuntimeError("mean_cost: call predict first.")
        return cost.estimate(self.multi, exit_rates=self.exit_rates,
                             **estimate_kwargs)
