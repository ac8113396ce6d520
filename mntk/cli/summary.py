"""The human summary ``mntk train`` prints: a run's ``RunSummary`` as a few lines.

One line per result the run has (Keras accuracy, each TFLite file, the
MicroNet cost, the tricks, early exit, pruning, quantization), read from the
``summary.json`` schema (``mntk.train.summary``), never from raw dict keys.
"""


def _pct(value) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}%"


def _score(cost) -> str:
    return f"{cost.score:.6f}" if cost is not None and cost.score is not None else "n/a"


def format_summary(summary) -> str:
    """A short human summary of a run's ``RunSummary`` (or its dict)."""
    from mntk.train.summary import RunSummary
    if isinstance(summary, dict):
        summary = RunSummary.from_dict(summary)
    lines = [f"{summary.recipe or 'run'}: finished in {summary.seconds:.0f} s"]
    if summary.accuracy is not None:
        lines.append(f"  Keras test accuracy      {_pct(summary.accuracy)}")
    for kind, r in (summary.tflite or {}).items():
        lines.append(f"  TFLite {kind:<17} {_pct(r.accuracy_tflite)}  agreement "
                     f"{_pct(r.agreement)}  max|diff| {r.max_abs_diff or 0:.2g}  "
                     f"{r.bytes:,} bytes")
    c = summary.cost
    if c is not None:
        lines.append(f"  MicroNet cost            params {c.params:,.0f}  ops {c.ops:,.0f}"
                     + (f"  score {c.score:.6f} ({c.task})" if c.score is not None else "")
                     + (f"\n    ({c.note})" if c.note else ""))
    tricks = summary.tricks or {}
    parts = []
    if "srip" in tricks:
        parts.append(f"SRIP {tricks['srip']['coefficient']} on {tricks['srip']['layers']} convs")
    if "adaptive_smoothing" in tricks:
        parts.append(f"adaptive label smoothing eps {tricks['adaptive_smoothing']['epsilon']}")
    if parts:
        lines.append("  tricks                   " + "; ".join(parts))
    e = summary.early_exit
    if e is not None:
        staged = e.staged_tflite.agreement if e.staged_tflite is not None else None
        lines.append(f"  early exit at {','.join(e.at)}  exit rate {_pct(e.exit_rate)}  accuracy "
                     f"{_pct(e.accuracy)} (final {_pct(e.final_accuracy)})  mean ops saved "
                     f"{_pct(e.ops_saved)}  staged TFLite agreement {_pct(staged)}")
    p = summary.pruning
    if p is not None:
        lines.append(f"  pruned to {p.target:.0%}            accuracy {_pct(p.accuracy)}  score "
                     + _score(p.cost))
        t = p.tflite
        if t is not None:
            encoding = "sparse-encoded" if t.sparse else f"dense ({t.sparse_note or 'no zeros'})"
            lines.append(f"  TFLite pruned float      {_pct(t.accuracy_tflite)}  agreement "
                         f"{_pct(t.agreement)}  {t.bytes:,} bytes, {encoding}")
    q = summary.quantization
    if q is not None:
        lines.append(f"  {q.scheme} QAT              accuracy {_pct(q.accuracy)}  mean weight bits "
                     f"{q.mean_weight_bits:.2f}  TFLite int8 agreement {_pct(q.tflite.agreement)}  "
                     f"{q.tflite.bytes:,} bytes (packed {q.size.get('packed_bytes', 0):,.0f})"
                     + (f"  score {_score(q.cost)}" if q.cost is not None else ""))
    return "\n".join(lines)
