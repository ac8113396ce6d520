"""One-page report of a training run: cost per layer, early-exit trade-off,
training curves, stage table and the MicroNet score against the leaderboard.

    paths = mntk.report.write_report("runs/demo", html=True)
    # runs/demo/report.md, runs/demo/report.html, runs/demo/report_*.png

Also ``mntk report WORKDIR [--html]``. Figures are drawn with matplotlib's Agg
canvas (no display needed). Parts a run lacks (no early exit, no quantization,
no task to score on) leave their sections out; a directory without
``summary.json`` is an error naming the path and what is missing.
"""
import os
from typing import List, Optional

from mntk.report import page, plots
from mntk.report.run import ReportError, Run, load_run

__all__ = ["write_report", "load_run", "figures", "ReportError", "Run", "plots", "page"]

#: PNG file name of each figure, in the output directory.
FIGURE_FILES = {"score": "report_score.png", "cost": "report_cost.png",
                "early_exit": "report_early_exit.png", "training": "report_training.png"}


def figures(run: Run) -> dict:
    """{key: matplotlib Figure} of every figure the run has data for."""
    out = {}
    # the leaderboard only for a run on the task's own data: a digits model
    # "0.04x the best CIFAR-100 entry" would mislead
    if run.score is not None and run.task in plots.LEADERBOARD and run.on_task_data:
        out["score"] = plots.score_anchors(run.score, run.task)
    if run.cost is not None and run.cost.get("layers"):
        out["cost"] = plots.cost_bars(run.cost)
    if run.calibration is not None:
        out["early_exit"] = plots.tradeoff_curve(run.calibration)
    curves = plots.training_curves(run.histories())
    if curves is not None:
        out["training"] = curves
    return out


def write_report(workdir: str, html: bool = False, out_dir: Optional[str] = None) -> List[str]:
    """Write ``report.md`` (+ ``report.html`` with ``html=True``) and its PNGs.

    Args:
      workdir: a work directory written by ``mntk.train.run`` (``mntk train``).
      html: also write a self-contained ``report.html`` (images embedded).
      out_dir: where to write (default: ``workdir``); created if missing.

    Returns:
      The written paths: ``report.md``, then ``report.html`` when asked, then
      the PNG files.

    Raises:
      ReportError (a ValueError): ``workdir`` is missing, not a directory, has
        no ``summary.json``, or holds a file that cannot be read.
    """
    run = load_run(workdir)
    out_dir = os.fspath(out_dir) if out_dir is not None else run.workdir
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report directory {out_dir}: "
                          f"{e.strerror or e}") from None
    images, pngs = {}, []
    for key, fig in figures(run).items():
        name = FIGURE_FILES[key]
        pngs.append(plots.save(fig, os.path.join(out_dir, name)))
        images[key] = name
    for key, name in FIGURE_FILES.items():
        stale = os.path.join(out_dir, name)
        if key not in images and os.path.isfile(stale):
            os.remove(stale)  # a figure of an earlier report this run no longer has
    sections = page.build_sections(run, images)
    title = f"mntk report: {run.recipe}"
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(page.to_markdown(title, sections))
    written = [md_path]
    if html:
        html_path = os.path.join(out_dir, "report.html")
        with open(html_path, "w") as f:
            f.write(page.to_html(title, sections, out_dir))
        written.append(html_path)
    return written + pngs
