"""Reading a work directory written by ``mntk.train.run``.

Layout read (every part but ``summary.json`` is optional)::

    WORKDIR/summary.json                  merged summary of the run (required)
    WORKDIR/cost.json                     mntk.cost report of the final model
    WORKDIR/calibration.json              early-exit calibration (with its curve)
    WORKDIR/stages/<k>_<stage>/           per stage: summary.json, history.csv
                                          (Keras CSVLogger), cost.json,
                                          calibration.json

``summary.json`` is read through its schema, ``mntk.train.summary``
(standard library only: reading a run imports no model code).
A missing part leaves its section out of the report; a part that exists but
cannot be read is an error naming the file (never silently skipped).
"""
import csv
import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Tuple

from mntk.train.summary import RunSummary, StageSummary, SummaryError

__all__ = ["ReportError", "Stage", "Run", "load_run", "read_history", "stage_figures"]

History = Dict[str, List[float]]


class ReportError(ValueError):
    """A work directory (or a file in it) that cannot be reported on."""


@dataclasses.dataclass
class Stage:
    """One stage of a run: its summary (``mntk.train.summary.StageSummary``),
    per-epoch history and ``cost.json``."""
    index: int
    name: str
    directory: Optional[str]
    summary: StageSummary
    history: History
    cost: Optional[Dict[str, Any]] = None


@dataclasses.dataclass
class Run:
    """What a report shows, read from one work directory."""
    workdir: str
    summary: RunSummary
    cost: Optional[Dict[str, Any]]
    calibration: Optional[Dict[str, Any]]
    stages: List[Stage]

    @property
    def recipe(self) -> str:
        return self.summary.recipe or os.path.basename(os.path.normpath(self.workdir))

    def _costs(self) -> List[Dict[str, Any]]:
        """Cost figures, the final model's first: last stage's, summary's, cost.json."""
        staged = [stage_figures(s)["cost"] for s in reversed(self.stages)]
        top = self.summary.cost.to_dict() if self.summary.cost is not None else None
        return [c for c in staged + [top, self.cost] if isinstance(c, dict) and c]

    @property
    def final_cost(self) -> Dict[str, Any]:
        """Cost figures (params, ops, score, ...) of the run's final model."""
        costs = [c for c in self._costs() if finite(c.get("params"))]
        return costs[0] if costs else {}

    @property
    def task(self) -> Optional[str]:
        """The MicroNet task the cost is scored on (None when unscored)."""
        for source in self._costs():
            if source.get("task"):
                return str(source["task"])
        return None

    @property
    def score(self) -> Optional[float]:
        """MicroNet score of the final model (the last stage that counted one)."""
        for source in self._costs():
            if finite(source.get("score")):
                return float(source["score"])
        return None

    @property
    def on_task_data(self) -> bool:
        """True when the run trained on the scoring task's own data set, so its
        score may be set against the leaderboard."""
        return self.summary.scored_on_task_data(self.task)

    @property
    def final_accuracy(self) -> Optional[float]:
        for stage in reversed(self.stages):
            acc = stage_figures(stage)["accuracy"]
            if acc is not None and stage.name not in ("early_exit", "prune_exits"):
                return acc
        return self.summary.accuracy if finite(self.summary.accuracy) else None

    def histories(self) -> List[Tuple[str, History]]:
        """(stage name, history) of every stage that logged epochs, in run order."""
        return [(s.name, s.history) for s in self.stages if s.history]


def finite(value) -> bool:
    """True for a real, finite number (not None, not a string, not NaN/inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _as_dict(value) -> Dict[str, Any]:
    return value.to_dict() if value is not None else {}


def stage_figures(stage: Stage) -> Dict[str, Any]:
    """A stage's headline figures (``StageSummary.figures``) as plain values:
    ``accuracy``, ``cost`` (dict, maybe empty), ``tflite`` ({file: dict}),
    ``sparsity`` (mean over layers) and ``bits`` (mean weight bits), each None
    when the stage has none."""
    figures = stage.summary.figures()
    cost = _as_dict(figures["cost"])
    if not cost and stage.cost:
        cost = {k: stage.cost.get(k) for k in ("params", "ops", "score", "task")}
    early = stage.summary.early_exit
    if not cost and early is not None:
        cost = {"ops": early.mean_ops}  # mean over examples with early exit
    return {"accuracy": figures["accuracy"], "cost": cost,
            "tflite": {name: t.to_dict() for name, t in figures["tflite"].items()},
            "sparsity": figures["sparsity"], "bits": figures["bits"]}


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path) as f:
            value = json.load(f)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: "
                          f"{e.msg}); rewrite it by rerunning the stage that wrote it.") from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path} holds a JSON {type(value).__name__}, expected an object; "
                          "is this an mntk work directory?")
    return value


def _optional_json(path: str) -> Optional[Dict[str, Any]]:
    return _read_json(path) if os.path.isfile(path) else None


def read_history(path: str) -> History:
    """Numeric columns of a Keras ``CSVLogger`` file (one row per epoch).

    Cells that are not numbers (empty, text) become NaN so every column keeps
    one value per epoch; columns with no number at all are dropped.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise ReportError(f"cannot read the training log {path}: {e}") from None
    columns: History = {}
    for row in rows:
        for key, cell in row.items():
            if key is None:  # more cells than header names: a damaged file
                raise ReportError(f"{path}: a row has more cells than the header; "
                                  "the log is damaged (rerun the stage).")
            try:
                value = float(cell)
            except (TypeError, ValueError):
                value = math.nan
            columns.setdefault(key, []).append(value)
    return {k: v for k, v in columns.items()
            if any(not math.isnan(x) for x in v)}


_STAGE_DIR = re.compile(r"^(\d+)_(.+)$")


def _stage_dirs(workdir: str) -> Dict[int, Tuple[str, str]]:
    """{index: (name, path)} of ``WORKDIR/stages/<k>_<name>`` folders."""
    root = os.path.join(workdir, "stages")
    found = {}
    if os.path.isdir(root):
        for entry in sorted(os.listdir(root)):
            match = _STAGE_DIR.match(entry)
            path = os.path.join(root, entry)
            if match and os.path.isdir(path):
                found[int(match.group(1))] = (match.group(2), path)
    return found


def _load_stage(index: int, name: str, directory: Optional[str],
                summary: Optional[StageSummary]) -> Stage:
    history: History = {}
    cost = None
    if directory is not None:
        csv_path = os.path.join(directory, "history.csv")
        if os.path.isfile(csv_path):
            history = read_history(csv_path)
        cost = _optional_json(os.path.join(directory, "cost.json"))
        if summary is None:
            path = os.path.join(directory, "summary.json")
            found = _optional_json(path)
            summary = _schema(StageSummary, found, path) if found is not None else None
    summary = summary or StageSummary(name=name)
    if not history:
        for section in (summary, summary.pruning, summary.quantization):
            if section is not None and section.history and not history:
                history = {k: [float(v) for v in values]
                           for k, values in section.history.items()}
    return Stage(index=index, name=name, directory=directory, summary=summary,
                 history=history, cost=cost)


def _stages(workdir: str, summary: RunSummary) -> List[Stage]:
    dirs = _stage_dirs(workdir)
    stages = []
    if summary.stages:
        for k, entry in enumerate(summary.stages):
            name = entry.name or f"stage{k}"
            directory = dirs[k][1] if k in dirs and dirs[k][0] == name else None
            stages.append(_load_stage(k, name, directory, entry))
    elif dirs:
        for k in sorted(dirs):
            name, directory = dirs[k]
            stages.append(_load_stage(k, name, directory, None))
    return stages


def _calibration(workdir: str, stages: List[Stage]) -> Optional[Dict[str, Any]]:
    """calibration.json at the top, else the last stage's."""
    top = _optional_json(os.path.join(workdir, "calibration.json"))
    if top is not None:
        return top
    for stage in reversed(stages):
        if stage.directory is not None:
            found = _optional_json(os.path.join(stage.directory, "calibration.json"))
            if found is not None:
                return found
    return None


def _schema(cls, data: Dict[str, Any], path: str):
    try:
        return cls.from_dict(data, os.path.basename(path))
    except SummaryError as e:
        raise ReportError(f"{path} does not follow the summary schema "
                          f"(mntk.train.summary): {e}; rerun the stage that wrote it.") from None


def load_run(workdir: str) -> Run:
    """Read a work directory into a ``Run``.

    Raises ``ReportError`` (a ``ValueError``) naming the path and what is
    missing when ``workdir`` is not a readable mntk work directory.
    """
    workdir = os.fspath(workdir)
    if not os.path.exists(workdir):
        raise ReportError(f"{workdir}: no such directory; give the --workdir of a "
                          "finished `mntk train` run.")
    if not os.path.isdir(workdir):
        raise ReportError(f"{workdir} is a file, not a work directory; give the "
                          "--workdir of a `mntk train` run.")
    summary_path = os.path.join(workdir, "summary.json")
    if not os.path.isfile(summary_path):
        present = sorted(os.listdir(workdir))[:8]
        raise ReportError(
            f"{workdir} is not an mntk work directory: summary.json is missing "
            f"(found: {', '.join(present) if present else 'nothing'}). `mntk train "
            f"--config=recipes/NAME.py --workdir={workdir}` writes one; a run that "
            "was stopped early writes it when resumed to the end.")
    summary = _schema(RunSummary, _read_json(summary_path), summary_path)
    stages = _stages(workdir, summary)
    cost_path = os.path.join(workdir, "cost.json")
    cost = _optional_json(cost_path)
    if cost is None:
        last = next((s for s in reversed(stages) if s.cost is not None), None)
        if last is not None:
            cost, cost_path = last.cost, os.path.join(last.directory, "cost.json")
    if cost is not None and not isinstance(cost.get("layers"), list):
        raise ReportError(f"{cost_path} has no 'layers' list; it is not an mntk.cost "
                          "report (CostReport.to_json()).")
    return Run(workdir=workdir, summary=summary, cost=cost,
               calibration=_calibration(workdir, stages), stages=stages)
