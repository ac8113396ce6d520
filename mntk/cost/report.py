"""Rows and totals of a MicroNet cost estimate, and their renderings."""
import dataclasses
import json
import math
from typing import List, Optional, Sequence, Tuple

from mntk.cost.storage import bit_groups

__all__ = ["LayerCost", "CostReport"]


@dataclasses.dataclass
class LayerCost:
    """The cost of one counted op (a row of the report).

    `mult_terms` / `add_terms` are (count, bits) pairs: an op at b bits counts
    b/32 of a 32-bit op (MicroNet rules), so
    ops = sum(count * bits / 32) over both lists.

    Attributes:
      name: row name (the layer name, or `layer/part` for a part of a layer:
        `/activation`, `/depthwise`, `/pointwise`).
      layer: the Keras layer the row came from (the wrapper's name for a
        tfmot-wrapped layer).
      kind: what was counted (`conv2d`, `depthwise`, `dense`, `bn`,
        `act:relu`, `add`, ... with `+bn` when a BatchNorm was folded in,
        `:ternary` / `:binary` when the kernel holds only those values).
      shape: output shape of the op, batch dimension dropped.
      bits: weight bits (mean over output channels) for rows with a kernel,
        else the multiply bits.
      sparsity: fraction of zeros in the kernel (0 for rows without one).
      param_bits: storage in bits (weights, masks, biases, scales, ranges).
      exit: index of the first model output that needs this row.
      encoding: for a row with a kernel, the storage chosen for it: "dense",
        "sparse" (nonzeros + 1-bit mask) or "block" (block sparsity); "" else.
      channel_bits: kernel rows: the weight bits of each output channel
        (numpy array), else None.
      channel_values: kernel rows: the values stored (and multiplied) per
        output channel, per output position (numpy array), else None.
      spatial: kernel rows: output positions per channel (N / channels).
      input_bits: kernel rows: the bits of the kernel's input tensor.
    The kernel fields let a caller recount a row at other bits: the row's
    multiplies are sum_c channel_values[c] * spatial, each at
    max(channel_bits[c], input_bits) (see `mntk.cost.layer_rows`).
    """
    name: str
    layer: str
    kind: str
    shape: Tuple
    bits: float = 32.0
    sparsity: float = 0.0
    param_bits: float = 0.0
    mult_terms: List[Tuple[float, float]] = dataclasses.field(default_factory=list)
    add_terms: List[Tuple[float, float]] = dataclasses.field(default_factory=list)
    exit: int = 0
    encoding: str = ""
    channel_bits: Optional[object] = None
    channel_values: Optional[object] = None
    spatial: int = 0
    input_bits: float = 32.0

    @property
    def channels(self) -> int:
        """Output channels of the row's kernel (0 for a row without one)."""
        return 0 if self.channel_bits is None else int(len(self.channel_bits))

    @property
    def mults(self) -> float:
        return sum(count for count, _ in self.mult_terms)

    @property
    def adds(self) -> float:
        return sum(count for count, _ in self.add_terms)

    @property
    def mult_ops(self) -> float:
        return sum(count * bits / 32.0 for count, bits in self.mult_terms)

    @property
    def add_ops(self) -> float:
        return sum(count * bits / 32.0 for count, bits in self.add_terms)

    @property
    def ops(self) -> float:
        """32-bit-equivalent ops: sum of count * bits / 32 over mults and adds."""
        return self.mult_ops + self.add_ops

    @property
    def params(self) -> float:
        return self.param_bits / 32.0

    @property
    def mult_bits(self) -> float:
        """Mean bits of this row's multiplies (0 without multiplies)."""
        return 32.0 * self.mult_ops / self.mults if self.mults else 0.0

    @property
    def add_bits(self) -> float:
        return 32.0 * self.add_ops / self.adds if self.adds else 0.0

    def to_json(self) -> dict:
        return {
            "name": self.name, "layer": self.layer, "kind": self.kind,
            "shape": [None if d is None else int(d) for d in self.shape],
            "bits": float(self.bits), "sparsity": float(self.sparsity),
            "param_bits": float(self.param_bits), "mults": float(self.mults),
            "adds": float(self.adds), "mult_bits": float(self.mult_bits),
            "add_bits": float(self.add_bits), "ops": float(self.ops),
            "exit": int(self.exit),
            "encoding": self.encoding,
            "bit_groups": ([] if self.channel_bits is None
                           else bit_groups(self.channel_bits)),
            "channels": self.channels,
        }


def _si(value: float) -> str:
    if value == 0:
        return "0"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{suffix}"
    return f"{value:.4g}"


@dataclasses.dataclass
class CostReport:
    """MicroNet cost of a model: storage, math ops and (with a task) the score.

    params = param_bits / 32; ops = mean over examples of
    sum(mults * mult_bits / 32 + adds * add_bits / 32);
    score = params / P_base + ops / M_base (MicroNet Challenge, NeurIPS 2019).
    With several outputs and `exit_rates`, an example leaving at output i pays
    `exit_ops[i]` (every row needed by outputs 0..i); params count every head.
    """
    layers: List[LayerCost]
    exit_ops: List[float]
    exit_rates: Optional[List[float]] = None
    task: Optional[str] = None
    freebie: bool = False
    accumulator_bits: float = 32
    model_name: str = ""
    conventions: Optional[object] = None   # the CountingProfile counted with

    def _expect(self, attr: str) -> float:
        """Mean over examples of the per-row attribute `attr`."""
        n_exits = len(self.exit_ops)
        per_exit = [0.0] * n_exits
        for row in self.layers:
            per_exit[row.exit] += getattr(row, attr)
        cumulative = [sum(per_exit[:i + 1]) for i in range(n_exits)]
        if self.exit_rates is None:
            return cumulative[-1]
        return sum(r * c for r, c in zip(self.exit_rates, cumulative))

    @property
    def param_bits(self) -> float:
        return sum(row.param_bits for row in self.layers)

    @property
    def params(self) -> float:
        return self.param_bits / 32.0

    @property
    def raw_mults(self) -> float:
        return self._expect("mults")

    @property
    def raw_adds(self) -> float:
        return self._expect("adds")

    @property
    def ops(self) -> float:
        return self._expect("ops")

    @property
    def score(self) -> Optional[float]:
        if self.task is None:
            return None
        from mntk.cost.baselines import baseline
        return baseline(self.task).score(self.params, self.ops)

    def totals(self) -> dict:
        return {
            "param_bits": float(self.param_bits), "params": float(self.params),
            "raw_mults": float(self.raw_mults), "raw_adds": float(self.raw_adds),
            "ops": float(self.ops), "score": self.score,
        }

    def to_json(self) -> dict:
        """A JSON-serializable dict: totals, settings, exits and every row."""
        from mntk.cost.baselines import BASELINES
        out = dict(self.totals())
        out.update({
            "model": self.model_name, "task": self.task,
            "baseline": BASELINES[self.task].to_json() if self.task else None,
            "freebie": bool(self.freebie),
            "conventions": (None if self.conventions is None
                            else self.conventions.to_json()),
            "accumulator_bits": float(self.accumulator_bits),
            "exit_ops": [float(v) for v in self.exit_ops],
            "exit_rates": (None if self.exit_rates is None
                           else [float(v) for v in self.exit_rates]),
            "layers": [row.to_json() for row in self.layers],
        })
        json.dumps(out)  # fail here, not in the caller, if anything slipped through
        return out

    _COLUMNS = ("name", "kind", "shape", "bits", "sparsity", "storage", "params",
                "mults", "adds", "ops")

    def _cells(self, row: LayerCost) -> Sequence[str]:
        return (row.name, row.kind, "x".join(str(d) for d in row.shape),
                f"{row.bits:g}", f"{row.sparsity:.3f}", row.encoding or "-", _si(row.params),
                _si(row.mults), _si(row.adds), _si(row.ops))

    def _summary_lines(self) -> List[str]:
        lines = [f"params {self.params:,.1f} (32-bit equivalents; {self.param_bits:,.0f} bits)",
                 f"ops {self.ops:,.1f} per example (32-bit equivalents; "
                 f"{self.raw_mults:,.0f} mults + {self.raw_adds:,.0f} adds raw)"]
        if len(self.exit_ops) > 1:
            lines.append("exit ops " + ", ".join(_si(v) for v in self.exit_ops)
                         + (f" at rates {self.exit_rates}" if self.exit_rates else
                            " (no exit_rates: every head computed)"))
        if self.freebie:
            lines.append("freebie: params and mults counted at 16 bits")
        if self.conventions is not None and self.conventions.name != "official":
            lines.append(f"counted with the {self.conventions.name!r} conventions")
        if self.task is not None:
            lines.append(f"score {self.score:.6f} on {self.task} baselines")
        return lines

    def table(self) -> str:
        """A printable fixed-width table of every row, then the totals."""
        rows = [self._COLUMNS] + [self._cells(r) for r in self.layers]
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(self._COLUMNS))]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines + [""] + self._summary_lines())

    def to_markdown(self) -> str:
        head = "| " + " | ".join(self._COLUMNS) + " |"
        rule = "|" + "---|" * len(self._COLUMNS)
        body = ["| " + " | ".join(str(c).replace("|", "\\|") for c in self._cells(r)) + " |"
                for r in self.layers]
        return "\n".join([head, rule] + body + [""] + [f"- {l}" for l in self._summary_lines()])

    def __repr__(self) -> str:
        score = "" if self.score is None else f", score={self.score:.6g}"
        return (f"CostReport(params={self.params:.6g}, ops={self.ops:.6g}{score}, "
                f"rows={len(self.layers)})")


def is_finite_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
