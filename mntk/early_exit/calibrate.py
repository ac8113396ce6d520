"""Exit thresholds chosen on held-out data for a target.

Exit rule (BranchyNet, Teerapittayanon et al. 2016; SDN, Kaya et al. 2019;
OSI-AI's MicroNet entry): a sample leaves at the first exit whose confidence
passes its threshold, otherwise at the final output:

- ``criterion="max_softmax"``: confidence ``max_k softmax(z)_k``, exits when
  ``>= t`` (OSI-AI: t = 0.85, about 30% of CIFAR-100 left after block 4);
- ``criterion="entropy"``: ``H = -sum_k p_k log p_k`` (nats), exits when
  ``H <= t``.

A sample no exit accepts answers with the final output
(``fallback="final"``), or, as SDN does, with the most confident of all its
heads (``fallback="most_confident"``; it still ran every stage, so its ops are
the final output's).

Calibration uses one threshold shared by all exits (SDN's single q), or with
``per_exit=True`` one threshold per exit chosen jointly (coordinate descent
over each exit's candidate thresholds, started from the shared one, under
the same target), and picks it for a target: an exit rate (fraction leaving before the final output), the
largest ops saving whose accuracy stays within ``max_accuracy_drop`` of the
final output's, or the best accuracy within a ``mean_ops`` budget. Mean ops =
``sum_i rate_i * exit_ops_i`` with ``exit_ops_i`` the ops of a sample leaving
at output i (``mntk.cost``); the saving is measured against the backbone
alone (no heads), so the heads' own cost counts against it.
"""
import dataclasses
import json
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from mntk.compat import keras
from mntk.early_exit import graph

__all__ = ["CRITERIA", "FALLBACKS", "confidence", "to_score", "exit_indices",
           "answer_heads", "Calibration", "calibrate", "collect_outputs",
           "evaluate"]

CRITERIA = ("max_softmax", "entropy")
FALLBACKS = ("final", "most_confident")


def _check_fallback(fallback):
    if fallback not in FALLBACKS:
        raise ValueError(f"Unknown fallback {fallback!r}; use one of "
                         f"{list(FALLBACKS)}.")


def _check_criterion(criterion):
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown exit criterion {criterion!r}; use one of "
                         f"{list(CRITERIA)}.")


def confidence(logits, criterion):
    """Per-sample confidence in the criterion's own units (float64 numpy)."""
    _check_criterion(criterion)
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    p = np.exp(log_p)
    if criterion == "max_softmax":
        return p.max(axis=-1)
    return -(p * log_p).sum(axis=-1)


def to_score(values, criterion):
    """Maps confidences or thresholds to a scale where larger = more confident."""
    values = np.asarray(values, dtype=np.float64)
    return values if criterion == "max_softmax" else -values


def exit_indices(exit_logits, thresholds, criterion):
    """Index of the output each sample leaves at (``len(exit_logits)`` = final)."""
    _check_criterion(criterion)
    if len(thresholds) != len(exit_logits):
        raise ValueError(f"Got {len(thresholds)} thresholds for "
                         f"{len(exit_logits)} exits; give one per exit.")
    n = len(exit_logits[0]) if exit_logits else 0
    choice = np.full(n, len(exit_logits), dtype=np.int64)
    for i in reversed(range(len(exit_logits))):
        passed = (to_score(confidence(exit_logits[i], criterion), criterion)
                  >= to_score(thresholds[i], criterion))
        choice[passed] = i
    return choice


def answer_heads(outputs, choice, criterion, fallback="final"):
    """Index of the head whose prediction each sample returns.

    ``choice``: where each sample stopped (``exit_indices``). With
    ``fallback="most_confident"`` a sample that ran to the end
    (``choice == len(outputs) - 1``) answers with its most confident head
    over all outputs (the first on ties), as SDN does.
    """
    _check_fallback(fallback)
    choice = np.asarray(choice)
    if fallback == "final":
        return choice
    scores = np.stack([to_score(confidence(o, criterion), criterion)
                       for o in outputs])
    best = scores.argmax(axis=0)
    last = len(outputs) - 1
    return np.where(choice == last, best, choice)


@dataclasses.dataclass
class Calibration:
    """Thresholds and what they achieve on the calibration data."""
    criterion: str
    thresholds: List[float]
    exit_rates: List[float]         # per output (exits then final), sums to 1
    accuracy: float                 # with early exit
    final_accuracy: float           # final output alone
    exit_ops: List[float]           # ops of a sample leaving at each output
    baseline_ops: float             # backbone without heads
    mean_ops: float
    ops_saved: float                # 1 - mean_ops / baseline_ops
    num_samples: int
    target: dict
    curve: Optional[list] = None    # [{threshold, exit_rate, accuracy, mean_ops}]
    fallback: str = "final"         # or "most_confident" (SDN)

    @property
    def exit_rate(self):
        """Fraction of samples leaving before the final output."""
        return 1.0 - self.exit_rates[-1]

    @property
    def accuracy_drop(self):
        return self.final_accuracy - self.accuracy

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, path=None):
        """JSON text; also written to ``path`` when given (e.g. calibration.json)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path):
        text = text_or_path
        if os.path.exists(str(text_or_path)):
            with open(text_or_path) as f:
                text = f.read()
        return cls(**json.loads(text))


def _labels(y, num_classes):
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] == num_classes and y.shape[-1] > 1:
        return y.argmax(axis=-1)
    return y.reshape(len(y)).astype(np.int64)


def collect_outputs(multi, data, batch_size=256, verbose="auto"):
    """All outputs' logits (list of numpy arrays) and integer labels on ``data``.

    ``data``: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches.
    """
    forward = tf.function(lambda x: multi(x, training=False),
                          reduce_retracing=True)
    if isinstance(data, tf.data.Dataset):
        batches = data
        total = data.cardinality().numpy()
        total = None if total < 0 else int(total)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        n = len(y)
        batches = ((x[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, n, batch_size))
        total = -(-n // batch_size)
    else:
        raise TypeError("calibrate: data must be (x, y) arrays or a tf.data."
                        f"Dataset of (x, y) batches, got {type(data).__name__}.")
    show = (total is None or total > 10) if verbose == "auto" else bool(verbose)
    bar = keras.utils.Progbar(total, unit_name="batch") if show else None
    outs, labels = None, []
    for step, (xb, yb) in enumerate(batches):
        logits = [np.asarray(o) for o in forward(tf.convert_to_tensor(xb))]
        outs = [[o] for o in logits] if outs is None else outs
        if step:
            for acc, o in zip(outs, logits):
                acc.append(o)
        labels.append(np.asarray(yb))
        if bar is not None:
            bar.update(step + 1)
    if outs is None:
        raise ValueError("calibrate: the calibration data is empty.")
    outs = [np.concatenate(o) for o in outs]
    return outs, _labels(np.concatenate(labels), outs[-1].shape[-1])


def evaluate(outputs, labels, thresholds, criterion, exit_ops, fallback="final"):
    """Exit rates, accuracy and mean ops of given thresholds on given logits."""
    choice = exit_indices(outputs[:-1], thresholds, criterion)
    return _summarize(outputs, labels, choice, exit_ops,
                      answer_heads(outputs, choice, criterion, fallback))


def _summarize(outputs, labels, choice, exit_ops, answer=None):
    n_out = len(outputs)
    predictions = np.stack([o.argmax(-1) for o in outputs])
    answer = choice if answer is None else answer
    chosen = predictions[answer, np.arange(len(labels))]
    rates = np.bincount(choice, minlength=n_out) / len(labels)
    mean_ops = float(np.dot(rates, exit_ops)) if exit_ops is not None else None
    return {"exit_rates": rates.tolist(),
            "accuracy": float(np.mean(chosen == labels)),
            "mean_ops": mean_ops}


def _candidates(best_scores, limit):
    """Thresholds (score scale) midway between distinct confidences."""
    values = np.unique(best_scores)
    mids = (values[:-1] + values[1:]) / 2.0
    if len(mids) > limit:
        mids = mids[np.linspace(0, len(mids) - 1, limit).round().astype(int)]
    return np.concatenate([[values[0] - 1.0], mids, [np.inf]])


def _ops(multi):
    from mntk import cost
    exit_ops = [float(o) for o in cost.estimate(multi).exit_ops]
    backbone = keras.Model(multi.inputs, multi.outputs[-1])
    return exit_ops, float(cost.estimate(backbone).ops)


def _joint(outcome, qs, candidates, targets, final_accuracy, tolerance, n):
    """Coordinate descent of per-exit score thresholds under one target."""
    (kind, goal), = targets.items()
    if kind == "exit_rate":
        tolerance = max(tolerance, 0.5 / n)

        def key(r):  # feasible first, then accuracy, then fewer ops
            rate = 1.0 - r["exit_rates"][-1]
            return (abs(rate - goal) <= tolerance, r["accuracy"], -r["mean_ops"])
    elif kind == "max_accuracy_drop":
        floor = final_accuracy - goal - 1e-12

        def key(r):
            return (r["accuracy"] >= floor, -r["mean_ops"], r["accuracy"])
    else:
        def key(r):
            return (r["mean_ops"] <= goal, r["accuracy"], -r["mean_ops"])
    best = key(outcome(qs))
    for _ in range(4):  # sweeps; each move strictly improves the key
        moved = False
        for i, cands in enumerate(candidates):
            for c in cands:
                trial = qs.copy()
                trial[i] = c
                k = key(outcome(trial))
                if k > best:
                    best, qs, moved = k, trial, True
        if not moved:
            break
    return qs


def calibrate(multi, data, criterion="max_softmax", exit_rate=None,
              max_accuracy_drop=None, mean_ops=None, curve=False,
              batch_size=256, exit_ops=None, baseline_ops=None,
              max_candidates=2000, verbose="auto", per_exit=False,
              fallback="final", rate_tolerance=0.01):
    """Chooses exit thresholds on ``data`` for exactly one target.

    Args:
      multi: a multi-exit model (``add_exits``).
      data: ``(x, y)`` or a ``tf.data.Dataset`` of ``(x, y)`` batches.
      criterion: ``"max_softmax"`` (exit when >= t) or ``"entropy"`` (<= t).
      exit_rate: wanted fraction leaving before the final output.
      max_accuracy_drop: largest ops saving whose accuracy >= final accuracy -
        this (a fraction: 0.005 = half a point).
      mean_ops: ops budget; best accuracy with mean ops <= it.
      curve: also return the swept trade-off curve.
      exit_ops, baseline_ops: override the ``mntk.cost`` counts.
      per_exit: one threshold per exit, chosen jointly: starting from the
        shared threshold, each exit's threshold in turn moves to the candidate
        that best serves the target while the others stay (sweeps until no
        move helps): ``exit_rate``: the best accuracy with the exit rate
        within ``rate_tolerance`` of the target; ``max_accuracy_drop``: the
        fewest mean ops within the drop; ``mean_ops``: the best accuracy
        within the budget. Never worse on ``data`` than the shared threshold.
      fallback: "final" or "most_confident" (SDN): what a sample no exit
        accepts answers with; calibration scores accuracy the same way.
      rate_tolerance: allowed |exit rate - target| for ``per_exit``.

    Returns a ``Calibration``.
    """
    _check_criterion(criterion)
    _check_fallback(fallback)
    targets = {k: v for k, v in (("exit_rate", exit_rate),
               ("max_accuracy_drop", max_accuracy_drop), ("mean_ops", mean_ops))
               if v is not None}
    if len(targets) != 1:
        raise ValueError(
            "calibrate: give exactly one target of exit_rate, max_accuracy_drop "
            f"or mean_ops; got {targets or 'none'}.")
    if exit_rate is not None and not 0.0 <= exit_rate <= 1.0:
        raise ValueError(f"calibrate: exit_rate={exit_rate!r} must be in [0, 1].")
    if max_accuracy_drop is not None and max_accuracy_drop < 0:
        raise ValueError(f"calibrate: max_accuracy_drop={max_accuracy_drop!r} "
                         "must be >= 0 (a fraction, 0.005 = half a point).")
    structure = graph.exit_structure(multi)
    if exit_ops is None or baseline_ops is None:
        counted_exit_ops, counted_baseline = _ops(multi)
        exit_ops = counted_exit_ops if exit_ops is None else exit_ops
        baseline_ops = counted_baseline if baseline_ops is None else baseline_ops
    exit_ops = [float(o) for o in exit_ops]
    if len(exit_ops) != structure.num_exits + 1:
        raise ValueError(f"calibrate: exit_ops has {len(exit_ops)} entries for "
                         f"{structure.num_exits + 1} outputs.")
    outputs, labels = collect_outputs(multi, data, batch_size, verbose)
    n = len(labels)
    scores = np.stack([to_score(confidence(o, criterion), criterion)
                       for o in outputs[:-1]])
    best = scores.max(axis=0)  # a sample exits early iff best >= q
    # SDN fallback: the most confident of all heads (answer_heads), computed once.
    most_confident = None if fallback == "final" else np.concatenate(
        [scores, to_score(confidence(outputs[-1], criterion), criterion)[None]]
    ).argmax(axis=0)

    def natural(q):
        return float(q if criterion == "max_softmax" else -q)

    def outcome(q):
        # q: one shared score threshold, or one per exit (a column vector).
        q = np.asarray(q, np.float64).reshape(-1, 1)
        choice = np.where(scores >= q, np.arange(len(scores))[:, None],
                          len(scores)).min(axis=0)
        answer = (choice if most_confident is None else
                  np.where(choice == len(scores), most_confident, choice))
        return _summarize(outputs, labels, choice, exit_ops, answer)

    sweep = None
    if curve or exit_rate is None:
        sweep = []
        for q in _candidates(best, max_candidates):
            row = outcome(q)
            sweep.append({"threshold": natural(q),
                          "exit_rate": 1.0 - row["exit_rates"][-1],
                          "accuracy": row["accuracy"],
                          "mean_ops": row["mean_ops"], "_q": q})
    final_accuracy = float(np.mean(outputs[-1].argmax(-1) == labels))
    if exit_rate is not None:
        k = int(round(exit_rate * n))
        ordered = np.sort(best)[::-1]
        if k == 0:
            q = np.inf
        elif k == n:
            q = ordered[-1] - 1.0
        else:
            q = (ordered[k - 1] + ordered[k]) / 2.0
    elif max_accuracy_drop is not None:
        floor = final_accuracy - max_accuracy_drop - 1e-12
        ok = [r for r in sweep if r["accuracy"] >= floor]
        q = min(ok, key=lambda r: (r["mean_ops"], -r["accuracy"]))["_q"]
    else:
        ok = [r for r in sweep if r["mean_ops"] <= mean_ops]
        if not ok:
            cheapest = min(r["mean_ops"] for r in sweep)
            raise ValueError(
                f"calibrate: no threshold reaches mean_ops <= {mean_ops:.6g}; the "
                f"cheapest on this data is {cheapest:.6g} (everything exiting as "
                "early as it can). Raise the budget or add an earlier exit.")
        q = max(ok, key=lambda r: (r["accuracy"], -r["mean_ops"]))["_q"]
    qs = np.full(structure.num_exits, q, np.float64)
    if per_exit and structure.num_exits > 1:
        qs = _joint(outcome, qs, [_candidates(s, min(100, max_candidates))
                                  for s in scores], targets, final_accuracy,
                    rate_tolerance, n)
    result = outcome(qs)
    for row in sweep or []:
        row.pop("_q")
    return Calibration(
        criterion=criterion, fallback=fallback,
        thresholds=[natural(v) for v in qs],
        exit_rates=result["exit_rates"], accuracy=result["accuracy"],
        final_accuracy=final_accuracy, exit_ops=exit_ops,
        baseline_ops=float(baseline_ops), mean_ops=result["mean_ops"],
        ops_saved=1.0 - result["mean_ops"] / float(baseline_ops),
        num_samples=int(n), target=targets, curve=sweep if curve else None)
