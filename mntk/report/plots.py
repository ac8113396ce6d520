"""The report's figures, drawn with matplotlib's Agg canvas (no display).

Every function takes plain dicts (the JSON a run wrote) and returns a
``matplotlib.figure.Figure`` built without ``pyplot``, so nothing global is
touched and a figure is freed as soon as it is dropped; ``save`` writes a PNG.
"""
import math
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

__all__ = ["LEADERBOARD", "BIT_COLORS", "layer_costs", "cost_bars", "tradeoff_curve",
           "HISTORY_PANELS", "history_panels", "training_curves", "score_anchors", "save"]

#: MicroNet Challenge 2019 leaderboard scores used as anchors, per task, best
#: first. CIFAR-100: 0.0054 is KAIST's entry (2nd; Kim et al., PMLR 123, 2020)
#: and 0.0058 OSI-AI's (3rd), as in DESIGN.md; the ImageNet scores are labelled
#: by their order among the anchors only, as their places were not checked.
LEADERBOARD: Dict[str, Tuple[Tuple[str, float], ...]] = {
    "cifar100": (("1st place", 0.0044), ("2nd place (KAIST)", 0.0054),
                 ("3rd place (OSI-AI)", 0.0058)),
    "imagenet": (("leaderboard entry A", 0.1295), ("leaderboard entry B", 0.4678)),
}

#: Colour of each bit width in the cost bars (other widths get grey shades).
BIT_COLORS = {32: "#4c72b0", 16: "#55a868", 8: "#dd8452", 6: "#c44e52", 5: "#8172b3",
              4: "#937860", 3: "#da8bc3", 2: "#8c8c8c", 1: "#ccb974"}

_LOWER_IS_BETTER = "lower is better"


def _canvas(fig: Figure) -> Figure:
    FigureCanvasAgg(fig)
    return fig


def _bucket(bits: float) -> int:
    """Bit width a segment is drawn at: the nearest whole bit, at least 1."""
    return max(1, int(round(float(bits))))


def _si(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def layer_costs(cost: dict) -> "OrderedDict[str, dict]":
    """Per Keras layer (in the report's topological order): params and ops by bits.

    A row's storage (``param_bits / 32``) is drawn at its weight bits; its ops
    split into multiplies at ``mult_bits`` (``mults * mult_bits / 32``) and
    adds at ``add_bits``. Sparsity of a layer is the storage-weighted mean of
    its rows' kernel sparsity.
    """
    out: "OrderedDict[str, dict]" = OrderedDict()
    for row in cost.get("layers", []):
        entry = out.setdefault(row.get("layer") or row["name"],
                               {"params": {}, "ops": {}, "sparsity_weight": 0.0,
                                "sparse_bits": 0.0})
        param_bits = float(row.get("param_bits", 0.0))
        if param_bits > 0:
            b = _bucket(row.get("bits", 32))
            entry["params"][b] = entry["params"].get(b, 0.0) + param_bits / 32.0
            entry["sparsity_weight"] += param_bits
            entry["sparse_bits"] += param_bits * float(row.get("sparsity", 0.0))
        for count_key, bits_key in (("mults", "mult_bits"), ("adds", "add_bits")):
            count, bits = float(row.get(count_key, 0.0)), float(row.get(bits_key, 0.0))
            if count > 0 and bits > 0:
                b = _bucket(bits)
                entry["ops"][b] = entry["ops"].get(b, 0.0) + count * bits / 32.0
    for entry in out.values():
        weight = entry.pop("sparsity_weight")
        entry["sparsity"] = entry.pop("sparse_bits") / weight if weight else 0.0
    return out


def _limit_layers(layers: "OrderedDict[str, dict]", max_layers: int):
    """Keeps the ``max_layers - 1`` costliest layers and sums the rest into one bar."""
    if len(layers) <= max_layers:
        return layers
    total_p = sum(sum(e["params"].values()) for e in layers.values()) or 1.0
    total_o = sum(sum(e["ops"].values()) for e in layers.values()) or 1.0
    share = {name: sum(e["params"].values()) / total_p + sum(e["ops"].values()) / total_o
             for name, e in layers.items()}
    keep = set(sorted(share, key=share.get, reverse=True)[:max_layers - 1])
    out = OrderedDict((n, e) for n, e in layers.items() if n in keep)
    rest = {"params": {}, "ops": {}, "sparsity": 0.0}
    for name, e in layers.items():
        if name not in keep:
            for key in ("params", "ops"):
                for b, v in e[key].items():
                    rest[key][b] = rest[key].get(b, 0.0) + v
    out[f"other ({len(layers) - len(keep)} layers)"] = rest
    return out


def cost_bars(cost: dict, max_layers: int = 60) -> Figure:
    """Per-layer stacked bars of params and ops, one colour per bit width.

    Layers holding zeros (pruned kernels) are hatched, drawn lighter (alpha
    ``1 - sparsity / 2``) and labelled with their sparsity.
    """
    layers = _limit_layers(layer_costs(cost), max_layers)
    names = list(layers)
    widths = sorted({b for e in layers.values() for key in ("params", "ops")
                     for b in e[key]}, reverse=True)
    fig = _canvas(Figure(figsize=(11, max(3.0, 0.24 * len(names) + 1.6))))
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(names))
    any_sparse = False
    for ax, key, label in ((axes[0], "params", "parameters (32-bit equivalents)"),
                           (axes[1], "ops", "ops per example (32-bit equivalents)")):
        left = np.zeros(len(names))
        for b in widths:
            values = np.array([layers[n][key].get(b, 0.0) for n in names])
            idx = np.flatnonzero(values > 0)
            for i in idx:
                s = layers[names[i]]["sparsity"]
                any_sparse |= s > 0
                ax.barh(y[i], values[i], left=left[i], color=BIT_COLORS.get(b, "#b0b0b0"),
                        alpha=1.0 - 0.5 * s, hatch="////" if s > 0 else None,
                        edgecolor="white" if s == 0 else "black", linewidth=0.4)
            left += values
        if key == "params":
            for i, n in enumerate(names):
                if layers[n]["sparsity"] > 0:
                    ax.text(left[i], y[i], f" {layers[n]['sparsity']:.0%} zeros",
                            va="center", fontsize=7)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{'storage' if key == 'params' else 'operations'}: "
                     f"{_si(left.sum())} in all", fontsize=10)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].set_ylabel("layer")
    axes[0].invert_yaxis()
    handles = [Patch(color=BIT_COLORS.get(b, "#b0b0b0"), label=f"{b}-bit") for b in widths]
    if any_sparse:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="////",
                             label="sparse (lighter = more zeros)"))
    axes[1].legend(handles=handles, loc="lower right", fontsize=8, title="bit width")
    fig.suptitle(f"Where the storage and operations go ({cost.get('model') or 'model'})")
    fig.tight_layout()
    return fig


def tradeoff_curve(calibration: dict) -> Figure:
    """Accuracy against mean ops per example over the calibration's threshold sweep.

    Marks the chosen threshold(s), the final output's accuracy and the
    backbone's ops without heads (the cost early exit saves against).
    """
    fig = _canvas(Figure(figsize=(7.5, 4.5)))
    ax = fig.subplots()
    curve = [p for p in (calibration.get("curve") or [])
             if p.get("mean_ops") is not None and p.get("accuracy") is not None]
    if curve:
        curve = sorted(curve, key=lambda p: (p["mean_ops"], p["accuracy"]))
        ax.plot([p["mean_ops"] for p in curve], [p["accuracy"] for p in curve], "-o",
                markersize=2.5, linewidth=1, color="#4c72b0",
                label=f"threshold sweep ({len(curve)} points)")
    criterion = calibration.get("criterion", "max_softmax")
    sign = ">=" if criterion == "max_softmax" else "<="
    thresholds = sorted({round(float(t), 6) for t in calibration.get("thresholds", [])})
    rate = 1.0 - calibration["exit_rates"][-1] if calibration.get("exit_rates") else None
    chosen = f"chosen: {criterion} {sign} " + ", ".join(f"{t:.3g}" for t in thresholds)
    if rate is not None:
        chosen += f" (exit rate {rate:.0%})"
    ax.plot([calibration["mean_ops"]], [calibration["accuracy"]], "*", markersize=16,
            color="#c44e52", markeredgecolor="black", label=chosen, zorder=5)
    if calibration.get("final_accuracy") is not None:
        ax.axhline(calibration["final_accuracy"], color="grey", linestyle="--", linewidth=1,
                   label=f"final output alone ({calibration['final_accuracy']:.2%})")
    if calibration.get("baseline_ops"):
        ax.axvline(calibration["baseline_ops"], color="grey", linestyle=":", linewidth=1,
                   label=f"backbone without heads ({_si(calibration['baseline_ops'])} ops)")
    ax.set_xlabel("mean ops per example (32-bit equivalents)")
    ax.set_ylabel("accuracy")
    n = calibration.get("num_samples")
    saved = calibration.get("ops_saved")
    ax.set_title("Early exit: accuracy vs mean ops" + (f" on {n} samples" if n else "") +
                 (f"; {saved:.0%} ops saved" if saved is not None else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


#: Panels of the training curves: (title, y label, test on a column name).
HISTORY_PANELS = (
    ("loss", "loss", lambda c: c == "loss" or c.endswith("_loss") and "srip" not in c),
    ("accuracy", "accuracy", lambda c: "accuracy" in c),
    ("SRIP", "SRIP value (sum of sigma)", lambda c: "srip" in c),
    ("sparsity", "sparsity (fraction of zeros)", lambda c: "sparsity" in c),
    ("mean bits", "mean weight bits", lambda c: "bits" in c),
    ("MicroNet score", "score", lambda c: "score" in c),
)


def history_panels(histories: Sequence[Tuple[str, Dict[str, List[float]]]]):
    """[(title, y label, [column, ...])] for the panels that have data, in order."""
    columns = []
    for _, history in histories:
        for c in history:
            if c not in columns and c != "epoch":
                columns.append(c)
    panels, taken = [], set()
    for title, ylabel, test in HISTORY_PANELS:
        mine = [c for c in columns if c not in taken and test(c.lower())]
        taken.update(mine)
        if mine:
            panels.append((title, ylabel, mine))
    return panels


def training_curves(histories: Sequence[Tuple[str, Dict[str, List[float]]]]
                    ) -> Optional[Figure]:
    """Loss, accuracy, SRIP, sparsity, mean bits and score per epoch, stages end to end.

    One line per logged column across the whole run (NaN where a stage did not
    log it); dotted vertical lines separate the stages. None without data.
    """
    panels = history_panels(histories)
    if not panels:
        return None
    lengths = [max((len(v) for v in h.values()), default=0) for _, h in histories]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    x = np.arange(1, offsets[-1] + 1)
    ncols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / ncols)
    fig = _canvas(Figure(figsize=(11 if ncols == 2 else 6.5, 2.9 * nrows + 0.6)))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax, (title, ylabel, columns) in zip(axes, panels):
        for column in columns:
            y = np.full(len(x), np.nan)
            for (_, history), start, n in zip(histories, offsets[:-1], lengths):
                values = history.get(column, [])[:n]
                y[start:start + len(values)] = values
            ax.plot(x, y, marker="o" if len(x) < 30 else None, markersize=3, label=column)
        if len(histories) > 1:
            for (name, _), start in zip(histories, offsets[:-1]):
                ax.axvline(start + 0.5, color="grey", linestyle=":", linewidth=1)
                ax.annotate(name, (start + 0.6, 1.0), xycoords=("data", "axes fraction"),
                            va="top", fontsize=7, color="dimgrey")
        if title == "MicroNet score" or (title == "SRIP" and _positive(ax)):
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Training curves" + (f" ({len(histories)} stages)" if len(histories) > 1
                                      else ""))
    fig.tight_layout()
    return fig


def _positive(ax) -> bool:
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()])
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > 20


def score_anchors(score: float, task: str, baseline_score: float = 2.0) -> Figure:
    """The run's MicroNet score on a log axis beside the task's leaderboard anchors.

    ``baseline_score`` marks the baseline model itself (P/P_base + M/M_base = 2).
    """
    if task not in LEADERBOARD:
        raise ValueError(f"score_anchors: no leaderboard anchors for task {task!r}; "
                         f"known tasks: {sorted(LEADERBOARD)}.")
    anchors = LEADERBOARD[task]
    fig = _canvas(Figure(figsize=(9, 3.0)))
    ax = fig.subplots()
    for k, (label, value) in enumerate(anchors):
        ax.plot([value], [0], "v", markersize=10, color="#4c72b0",
                label="leaderboard" if k == 0 else None)
        # anchors sit close together on a log axis: stagger their labels
        ax.annotate(f"{label}: {value:g}", (value, 0), xytext=(0, 12 + 13 * k),
                    textcoords="offset points", ha="center", fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "#9db3d6", "linewidth": 0.6})
    ax.plot([baseline_score], [0], "s", markersize=8, color="grey", label="baseline model")
    ax.annotate(f"baseline\n{baseline_score:g}", (baseline_score, 0), xytext=(0, 12),
                textcoords="offset points", ha="center", fontsize=7)
    ax.plot([score], [0], "*", markersize=18, color="#c44e52", markeredgecolor="black",
            label=f"this run: {score:.4g}", zorder=5)
    values = [v for _, v in anchors] + [baseline_score, score]
    ax.set_xscale("log")
    ax.set_xlim(min(values) / 2.5, max(values) * 2.5)
    ax.set_ylim(-1, 2.2)
    ax.set_yticks([])
    ax.set_xlabel(f"MicroNet score on {task} (log scale, {_LOWER_IS_BETTER})")
    best = anchors[0][1]
    ax.set_title(f"Score {score:.4g}: {score / best:.3g}x the best anchor ({best:g})",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG at ``path`` and return the path."""
    fig.savefig(path, format="png", dpi=dpi)
    return path
