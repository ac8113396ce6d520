"""The schema of ``summary.json``: what the runner writes, what the report,
the CLI and the tests read.

Standard library only, so reading a run needs no TensorFlow model code.

Layout (``RunSummary.to_dict()``)::

    {"recipe": str, "dataset": str, "seconds": float,
     "stages": [StageSummary, ...],           # in run order, each with "name"
     # merged from the stages (``RunSummary.merge``): the float model's
     # figures at top level (first stage that has them), the later stages'
     # sections (last stage that has them)
     "accuracy", "tricks", "history", "cost", "tflite",
     "early_exit", "pruning", "quantization"}

Each ``stages/<k>_<name>/summary.json`` is one ``StageSummary``. Reading is
strict: an unknown key is an error naming it (a field added to the runner
is added here, the one place it is declared). Adding a figure: add a field
with a default to the dataclass that holds it; adding a stage section: a
dataclass plus a ``StageSummary`` field plus its name in ``SECTIONS``.
"""
import dataclasses
import json
import math
import typing
from typing import Any, Dict, List, Optional

History = Dict[str, List[float]]


class SummaryError(ValueError):
    """A summary.json that does not follow this schema."""


def _from_dict(cls, data: Any, where: str):
    """``cls(**data)`` with nested dataclasses built and unknown keys refused."""
    if not isinstance(data, dict):
        raise SummaryError(f"{where}: expected an object for {cls.__name__}, got "
                           f"{type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SummaryError(f"{where}: unknown key(s) {unknown} for {cls.__name__}; known: "
                           f"{', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _build(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise SummaryError(f"{where}: {e}") from None


def _build(hint, value, where):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, where)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise SummaryError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _from_dict(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return [_from_dict(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


class _Figures:
    """to_dict / from_dict for the dataclasses below."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], where: str = "summary.json"):
        return _from_dict(cls, data, where)


@dataclasses.dataclass
class CostFigures(_Figures):
    """``mntk.cost.estimate`` of a model, as the stages report it."""
    params: float
    ops: float
    score: Optional[float] = None        # None when there is no task to score on
    param_bits: Optional[float] = None
    task: Optional[str] = None
    freebie: bool = False
    note: Optional[str] = None


@dataclasses.dataclass
class TfliteFigures(_Figures):
    """One TFLite file and its LiteRT-vs-Keras parity on the test split."""
    path: str
    bytes: int
    agreement: Optional[float] = None
    max_abs_diff: Optional[float] = None
    accuracy_tflite: Optional[float] = None
    accuracy_keras: Optional[float] = None
    sparse: bool = False                 # weights in TFLite's sparse format
    sparse_note: Optional[str] = None    # why a pruned model's file is dense


@dataclasses.dataclass
class StagedTfliteFigures(_Figures):
    directory: str
    agreement: float
    same_exits: float


@dataclasses.dataclass
class EarlyExitFigures(_Figures):
    """The ``early_exit`` stage: calibration on validation, figures on test."""
    at: List[str]
    head: str
    criterion: str
    thresholds: List[float]
    calibration_target: Dict[str, float]
    exit_rate: float
    exit_rates: List[float]
    accuracy: float
    final_accuracy: float
    accuracy_drop: float
    mean_ops: float
    backbone_ops: float
    ops_saved: float
    staged_tflite: Optional[StagedTfliteFigures] = None


@dataclasses.dataclass
class PruningFigures(_Figures):
    """The ``prune`` stage: per-layer sparsity of the pruned kernels."""
    target: float
    sparsity: Dict[str, float]
    accuracy: float
    history: History = dataclasses.field(default_factory=dict)
    cost: Optional[CostFigures] = None
    tflite: Optional[TfliteFigures] = None  # the pruned model, float, sparse-encoded

    @property
    def mean_sparsity(self) -> Optional[float]:
        values = [v for v in self.sparsity.values() if _finite(v)]
        return sum(values) / len(values) if values else None


@dataclasses.dataclass
class QuantizationFigures(_Figures):
    """The ``quantize`` and ``finetune`` stages."""
    scheme: str
    accuracy: float
    mean_weight_bits: float
    tflite: TfliteFigures
    mean_activation_bits: Optional[float] = None
    distillation: bool = False
    cost_target: Optional[Dict[str, Any]] = None
    frozen_bit_widths: Optional[int] = None      # finetune only
    phases: Optional[List[Any]] = None           # quantize.phases (Texas-EIC)
    swa: Optional[Dict[str, Any]] = None         # finetune.swa
    size: Dict[str, Any] = dataclasses.field(default_factory=dict)
    history: History = dataclasses.field(default_factory=dict)
    cost: Optional[CostFigures] = None


#: The data sets each MicroNet task is scored on: a run on any other data set
#: has a score for scale only (it is not comparable with the leaderboard).
TASK_DATASETS = {"cifar100": ("cifar100",), "imagenet": ("imagenet2012",)}

#: Sections of a stage summary that the later stages fill.
SECTIONS = ("early_exit", "pruning", "quantization")
#: Top-level figures of the float model (train and export stages).
TOP_LEVEL = ("accuracy", "tricks", "history", "cost", "tflite")


@dataclasses.dataclass
class StageSummary(_Figures):
    """One stage's ``summary.json``: the train stage fills ``accuracy``,
    ``tricks``, ``history``, ``cost``; export ``tflite``; the others their
    section."""
    name: str = ""
    accuracy: Optional[float] = None
    tricks: Optional[Dict[str, Any]] = None
    history: Optional[History] = None
    cost: Optional[CostFigures] = None
    tflite: Optional[Dict[str, TfliteFigures]] = None
    early_exit: Optional[EarlyExitFigures] = None
    pruning: Optional[PruningFigures] = None
    quantization: Optional[QuantizationFigures] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def figures(self) -> Dict[str, Any]:
        """Headline figures wherever this stage put them: ``accuracy``,
        ``cost`` (CostFigures or None), ``tflite`` ({file name: TfliteFigures}),
        ``sparsity`` (mean over layers) and ``bits`` (mean weight bits)."""
        section = self.pruning or self.quantization
        accuracy = self.accuracy if self.accuracy is not None else (
            section.accuracy if section is not None else
            self.early_exit.accuracy if self.early_exit is not None else None)
        cost = self.cost or (section.cost if section is not None else None)
        tflite = dict(self.tflite or {})
        if self.quantization is not None:
            tflite[self.quantization.tflite.path.rsplit("/", 1)[-1]] = self.quantization.tflite
        return {"accuracy": accuracy, "cost": cost, "tflite": tflite,
                "sparsity": self.pruning.mean_sparsity if self.pruning else None,
                "bits": self.quantization.mean_weight_bits if self.quantization else None}


@dataclasses.dataclass
class RunSummary(_Figures):
    """``WORKDIR/summary.json``: every stage, plus the merged headline figures."""
    recipe: str = ""
    dataset: str = ""
    seconds: float = 0.0
    stages: List[StageSummary] = dataclasses.field(default_factory=list)
    accuracy: Optional[float] = None
    tricks: Optional[Dict[str, Any]] = None
    history: Optional[History] = None
    cost: Optional[CostFigures] = None
    tflite: Optional[Dict[str, TfliteFigures]] = None
    early_exit: Optional[EarlyExitFigures] = None
    pruning: Optional[PruningFigures] = None
    quantization: Optional[QuantizationFigures] = None

    def merge(self, stage: StageSummary) -> None:
        """Append a stage; the first stage wins at top level, the last per section."""
        self.stages.append(stage)
        for key in TOP_LEVEL:
            if getattr(stage, key) is not None and getattr(self, key) is None:
                setattr(self, key, getattr(stage, key))
        for key in SECTIONS:
            if getattr(stage, key) is not None:
                setattr(self, key, getattr(stage, key))

    def to_dict(self) -> Dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        out["stages"] = [s.to_dict() for s in self.stages]
        return out

    def scored_on_task_data(self, task: Optional[str]) -> bool:
        """True when the run's data set is the one ``task`` is scored on
        (a digits model scored against CIFAR-100 is not)."""
        return self.dataset in TASK_DATASETS.get(task or "", ())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def read(cls, path: str) -> "RunSummary":
        with open(path) as f:
            return cls.from_dict(json.load(f), path)


def read_stage(path: str) -> StageSummary:
    with open(path) as f:
        return StageSummary.from_dict(json.load(f), path)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)
