"""The one-page report: sections built from a ``Run``, rendered as Markdown or HTML.

A page is a list of ``Section``s, each a title and blocks (paragraphs, tables,
images); both renderings come from the same blocks, so the Markdown and the
HTML always say the same thing. The HTML is self-contained: images are
embedded as base64 ``data:`` URIs, the style sheet is inline, no scripts.
"""
import base64
import dataclasses
import html
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mntk.report.plots import LEADERBOARD, layer_costs
from mntk.report.run import Run, finite, stage_figures

__all__ = ["Section", "build_sections", "to_markdown", "to_html"]


@dataclasses.dataclass
class Section:
    """A titled part of the page; blocks are ("p", text), ("table", header,
    rows) or ("img", file name, alt text)."""
    key: str
    title: str
    blocks: List[Tuple] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------ numbers

def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


def fmt(value: Any, kind: str = "") -> str:
    """A cell: percentages for accuracies/rates, SI for counts, commas for bytes."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not finite(value):
        return str(value)
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "si":
        return _si(value)
    if kind == "bytes":
        return f"{int(value):,}"
    if kind == "score":
        return f"{value:.6f}" if value < 0.1 else f"{value:.4f}"
    if kind == "bits":
        return f"{value:.2f}"
    return f"{value:.4g}"


def _scalars(d: Any, prefix: str = "", skip: Sequence[str] = ()) -> List[Tuple[str, Any]]:
    """Flat (dotted key, value) pairs of a nested dict for a figure table.

    Per-layer dicts (more than 8 numbers) become one "mean (min-max) over N"
    entry; long lists and the keys in ``skip`` are left out.
    """
    out = []
    if not isinstance(d, dict):
        return out
    for key in sorted(d):
        value, name = d[key], f"{prefix}{key}"
        if key in skip:
            continue
        if isinstance(value, dict):
            numbers = [v for v in value.values() if finite(v)]
            if len(value) > 8 and len(numbers) == len(value):
                out.append((f"{name} (over {len(numbers)} entries)",
                            f"mean {fmt(sum(numbers) / len(numbers))}, min "
                            f"{fmt(min(numbers))}, max {fmt(max(numbers))}"))
            elif len(value) > 8:  # e.g. per-layer records: too long for one page
                out.append((name, f"{len(value)} entries (see summary.json)"))
            else:
                out.extend(_scalars(value, f"{name}.", skip))
        elif isinstance(value, (list, tuple)):
            if 0 < len(value) <= 8 and all(isinstance(v, (int, float, str)) for v in value):
                out.append((name, ", ".join(fmt(v) for v in value)))
        elif value is not None:
            out.append((name, value))
    return out


def _tflite_cell(tflite: Dict[str, Any]) -> str:
    if not tflite:
        return "-"
    return "; ".join(f"{name} {fmt(r.get('bytes'), 'bytes')}" for name, r in tflite.items())


# ----------------------------------------------------------------- sections

def _summary_section(run: Run) -> Section:
    s = run.summary
    rows = [("recipe", run.recipe)]
    accuracy = run.final_accuracy
    if accuracy is not None:
        rows.append(("test accuracy (final model)", fmt(accuracy, "pct")))
    if finite(s.accuracy) and accuracy is not None and abs(s.accuracy - accuracy) > 1e-9:
        rows.append(("test accuracy (float model)", fmt(s.accuracy, "pct")))
    cost = run.final_cost
    if finite(cost.get("params")):
        rows.append(("params (32-bit equivalents)", fmt(cost["params"], "si")))
    if finite(cost.get("ops")):
        rows.append(("ops per example (32-bit equivalents)", fmt(cost["ops"], "si")))
    if run.score is not None:
        rows.append((f"MicroNet score ({run.task})", fmt(run.score, "score")))
    for stage in run.stages:
        for name, r in stage_figures(stage)["tflite"].items():
            if finite(r.get("bytes")):
                extra = (f", agreement {fmt(r['agreement'], 'pct')}"
                         if finite(r.get("agreement")) else "")
                rows.append((f"TFLite {name}", f"{fmt(r['bytes'], 'bytes')} bytes{extra}"))
    early = s.early_exit.to_dict() if s.early_exit is not None else {}
    cal = run.calibration or {}
    rate = early.get("exit_rate")
    if not finite(rate) and cal.get("exit_rates"):
        rate = 1 - cal["exit_rates"][-1]
    saved = early.get("ops_saved") if finite(early.get("ops_saved")) else cal.get("ops_saved")
    if finite(rate):
        rows.append(("early exit", f"{fmt(rate, 'pct')} leave early, {fmt(saved, 'pct')} "
                     "mean ops saved" + (f", accuracy drop {fmt(early['accuracy_drop'], 'pct')}"
                                         if finite(early.get("accuracy_drop")) else "")))
    figures = [stage_figures(st) for st in run.stages]
    sparsity = next((f["sparsity"] for f in reversed(figures) if f["sparsity"] is not None), None)
    bits = next((f["bits"] for f in reversed(figures) if f["bits"] is not None), None)
    if sparsity is not None:
        rows.append(("sparsity (mean over layers)", fmt(sparsity, "pct")))
    if bits is not None:
        rows.append(("mean weight bits", fmt(bits, "bits")))
    if finite(s.seconds) and s.seconds > 0:
        rows.append(("run time", f"{s.seconds:.0f} s"))
    blocks = [("table", ("figure", "value"), rows)]
    note = cost.get("note") or (s.cost.note if s.cost is not None else None)
    if note:
        blocks.append(("p", f"Note: {note}."))
    if run.score is not None and not run.on_task_data:
        blocks.append(("p", f"No leaderboard comparison: this run's data set is "
                            f"{s.dataset or 'not recorded'}, not the {run.task} task's own, so "
                            "its score is for scale only."))
    return Section("summary", "Summary", blocks)


def _score_section(run: Run, image: Optional[str]) -> Optional[Section]:
    if run.score is None or run.task not in LEADERBOARD or image is None \
            or not run.on_task_data:
        return None
    rows = [(label, f"{value:g}", f"{run.score / value:.3g}x")
            for label, value in LEADERBOARD[run.task]]
    rows.append(("baseline model", "2", f"{run.score / 2.0:.3g}x"))
    return Section("score", "MicroNet score", [
        ("p", f"This run scores {fmt(run.score, 'score')} on the {run.task} rules "
              "(params / P_base + ops / M_base; lower is better)."),
        ("img", image, f"MicroNet score against the {run.task} leaderboard"),
        ("table", ("anchor", "score", "this run / anchor"), rows)])


def _stages_section(run: Run) -> Optional[Section]:
    if not run.stages:
        return None
    figures = [stage_figures(st) for st in run.stages]
    header = ["stage", "accuracy", "params", "ops", "score", "TFLite bytes"]
    header += ["sparsity"] if any(f["sparsity"] is not None for f in figures) else []
    header += ["mean bits"] if any(f["bits"] is not None for f in figures) else []
    rows = []
    for st, f in zip(run.stages, figures):
        cost = f["cost"]
        row = [f"{st.index}: {st.name}", fmt(f["accuracy"], "pct"),
               fmt(cost.get("params"), "si"), fmt(cost.get("ops"), "si"),
               fmt(cost.get("score"), "score"), _tflite_cell(f["tflite"])]
        row += [fmt(f["sparsity"], "pct")] if "sparsity" in header else []
        row += [fmt(f["bits"], "bits")] if "mean bits" in header else []
        rows.append(row)
    blocks = [("table", tuple(header), rows)]
    if any(st.name in ("early_exit", "prune_exits") for st in run.stages):
        blocks.append(("p", "The early_exit and prune_exits stages' accuracy and ops are "
                            "those with early exit on the test split (mean ops per "
                            "example)."))
    return Section("stages", "Stages", blocks)


def _tflite_section(run: Run) -> Optional[Section]:
    rows = []
    for st in run.stages:
        for name, r in stage_figures(st)["tflite"].items():
            rows.append((st.name, name, fmt(r.get("bytes"), "bytes"),
                         fmt(r.get("agreement"), "pct"), fmt(r.get("max_abs_diff")),
                         fmt(r.get("accuracy_tflite"), "pct"),
                         fmt(r.get("accuracy_keras"), "pct")))
    if not rows:
        return None
    return Section("tflite", "TFLite export", [
        ("p", "Each file run with LiteRT on the test split against the Keras model."),
        ("table", ("stage", "file", "bytes", "top-1 agreement", "max abs diff",
                   "accuracy TFLite", "accuracy Keras"), rows)])


def _cost_section(run: Run, image: Optional[str]) -> Optional[Section]:
    if run.cost is None or image is None:
        return None
    layers = layer_costs(run.cost)
    top = sorted(layers.items(), key=lambda kv: sum(kv[1]["ops"].values()), reverse=True)[:5]
    rows = [(name, fmt(sum(e["params"].values()), "si"), fmt(sum(e["ops"].values()), "si"),
             "+".join(f"{b}" for b in sorted(e["ops"], reverse=True)) or "-",
             fmt(e["sparsity"], "pct"))
            for name, e in top]
    totals = (f"{len(run.cost.get('layers', []))} counted ops in {len(layers)} layers; "
              f"params {fmt(run.cost.get('params'), 'si')}, ops "
              f"{fmt(run.cost.get('ops'), 'si')} per example")
    if run.cost.get("freebie"):
        totals += " (freebie: params and multiplies at 16 bits)"
    return Section("cost", "Cost per layer", [
        ("p", totals + "."),
        ("img", image, "per-layer params and ops by bit width"),
        ("table", ("costliest layers", "params", "ops", "op bits", "sparsity"), rows)])


def _early_exit_section(run: Run, image: Optional[str]) -> Optional[Section]:
    cal = run.calibration
    if cal is None or image is None:
        return None
    early = run.summary.early_exit.to_dict() if run.summary.early_exit is not None else {}
    rates = cal.get("exit_rates") or []
    sign = ">=" if cal.get("criterion", "max_softmax") == "max_softmax" else "<="
    where = (f"Exit heads at {', '.join(map(str, early['at']))} ({early.get('head', '?')} "
             "head); " if early.get("at") else "")
    target = ", ".join(f"{k}={v}" for k, v in (cal.get("target") or {}).items()) or "-"
    intro = (f"{where}a sample leaves at the first exit whose {cal.get('criterion')} "
             f"{sign} {', '.join(fmt(t) for t in cal.get('thresholds', []))}; "
             f"thresholds calibrated for {target}.")
    test_rates = early.get("exit_rates") or []
    rows = [
        ("exit rates (per output)", ", ".join(fmt(r, "pct") for r in rates) or "-",
         ", ".join(fmt(r, "pct") for r in test_rates) or "-"),
        ("accuracy with early exit", fmt(cal.get("accuracy"), "pct"),
         fmt(early.get("accuracy"), "pct")),
        ("accuracy of the final output", fmt(cal.get("final_accuracy"), "pct"),
         fmt(early.get("final_accuracy"), "pct")),
        ("mean ops per example", fmt(cal.get("mean_ops"), "si"), fmt(early.get("mean_ops"), "si")),
        ("backbone ops (no heads)", fmt(cal.get("baseline_ops"), "si"),
         fmt(early.get("backbone_ops"), "si")),
        ("mean ops saved", fmt(cal.get("ops_saved"), "pct"), fmt(early.get("ops_saved"), "pct")),
    ]
    staged = early.get("staged_tflite") if isinstance(early.get("staged_tflite"), dict) else {}
    for key, label in (("agreement", "staged TFLite agrees with the Keras runner"),
                       ("same_exits", "staged TFLite takes the same exits")):
        if finite(staged.get(key)):
            rows.append((label, "-", fmt(staged[key], "pct")))
    n = cal.get("num_samples")
    header = ("figure", f"calibration data{f' ({n} samples)' if n else ''}", "test split")
    return Section("early_exit", "Early exit", [
        ("p", intro),
        ("img", image, "early-exit trade-off: accuracy vs mean ops"),
        ("table", header, rows)])


def _fmt_key(key: str, value: Any) -> str:
    """A figure formatted by what its key names (rates as %, sizes with commas)."""
    k = key.lower()
    if any(w in k for w in ("accuracy", "agreement", "sparsity", "rate", "saved", "target")) \
            and finite(value) and 0 <= value <= 1:
        return fmt(value, "pct")
    if "bytes" in k and finite(value):
        return fmt(value, "bytes")
    if ("ops" in k or "params" in k) and finite(value):
        return fmt(value, "si")
    return fmt(value)


def _group_section(run: Run, key: str, title: str) -> Optional[Section]:
    section = getattr(run.summary, key)
    pairs = _scalars(section.to_dict() if section is not None else None,
                     skip=("history", "cost"))
    if not pairs:
        return None
    return Section(key, title, [("table", ("figure", "value"),
                                 [(k, _fmt_key(k, v)) for k, v in pairs])])


def _curves_section(run: Run, image: Optional[str]) -> Optional[Section]:
    histories = run.histories()
    if not histories or image is None:
        return None
    epochs = sum(max(len(v) for v in h.values()) for _, h in histories)
    names = ", ".join(name for name, _ in histories)
    return Section("training", "Training curves", [
        ("p", f"{epochs} epochs logged over {len(histories)} stage(s): {names}."),
        ("img", image, "training curves")])


def build_sections(run: Run, images: Dict[str, str]) -> List[Section]:
    """The page's sections; ``images`` maps a figure key (score, cost, early_exit,
    training) to its PNG file name. Parts the run lacks are left out."""
    sections = [
        _summary_section(run),
        _score_section(run, images.get("score")),
        _stages_section(run),
        _tflite_section(run),
        _cost_section(run, images.get("cost")),
        _early_exit_section(run, images.get("early_exit")),
        _group_section(run, "pruning", "Pruning"),
        _group_section(run, "quantization", "Quantization"),
        _curves_section(run, images.get("training")),
    ]
    return [s for s in sections if s is not None]


# ---------------------------------------------------------------- rendering

def _md_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: List[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "img":
                lines += [f"![{block[2]}]({block[1]})", ""]
            elif block[0] == "table":
                header, rows = block[1], block[2]
                lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                lines.append("|" + "---|" * len(header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
"""


def to_html(title: str, sections: List[Section], image_dir: str) -> str:
    """Self-contained HTML; images read from ``image_dir`` and embedded as base64."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
             f"<h1>{esc(title)}</h1>"]
    nav = " | ".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    parts.append(f"<nav>{nav}</nav>")
    for section in sections:
        parts.append(f'<section id="{esc(section.key)}"><h2>{esc(section.title)}</h2>')
        for block in section.blocks:
            if block[0] == "p":
                parts.append(f"<p>{esc(block[1])}</p>")
            elif block[0] == "img":
                with open(os.path.join(image_dir, block[1]), "rb") as f:
                    data = base64.b64encode(f.read()).decode("ascii")
                parts.append(f'<img alt="{esc(block[2])}" src="data:image/png;base64,{data}">')
            elif block[0] == "table":
                header, rows = block[1], block[2]
                parts.append("<table><thead><tr>" +
                             "".join(f"<th>{esc(str(h))}</th>" for h in header) +
                             "</tr></thead><tbody>")
                parts += ["<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>"
                          for row in rows]
                parts.append("</tbody></table>")
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
