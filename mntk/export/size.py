"""TFLite file size next to the theoretical packed size of the same model.

TFLite stores quantized weights as int8 (ternary, binary and 2..7-bit weights
all take a byte each) plus per-channel scales, the graph and metadata. The
MicroNet rules count what a packed format would need: nonzero values at their
bits, a 1-bit mask over a sparse tensor, each extra scale at 32 bits. That
theoretical size is ``mntk.cost.estimate(model).param_bits / 8``;
``size_report`` puts both side by side, per layer where it can, with the
file's other encodings: dense, TFLite-sparse (``to_tflite(sparse=True)``) and
gzip -9 of the file (what a download or an OTA update ships; zeros and the
few distinct values of ternary/low-bit weights compress well).
"""
import dataclasses
import gzip
import os
import tempfile
from typing import List, Optional


@dataclasses.dataclass
class SizeRow:
    """One layer: packed bits as ``mntk.cost`` counts them."""
    layer: str
    kind: str
    bits: object
    sparsity: float
    packed_bytes: float


@dataclasses.dataclass
class SizeReport:
    """TFLite bytes vs theoretical packed bytes.

    Attributes:
      tflite_bytes: size of the .tflite file (None without a file).
      packed_bytes: ``param_bits / 8`` from ``mntk.cost.estimate``.
      float32_bytes: 4 bytes per parameter (the unquantized reference).
      ratio: tflite_bytes / packed_bytes.
      rows: per-layer packed sizes.
      dense_bytes / sparse_bytes: the file in the dense and in the sparse
        encoding (same quantization; the other one is re-exported when
        ``tflite`` is an ``ExportResult``); None where not available.
      gzip_bytes: ``gzip -9`` of the file.
      sparse_note: why ``sparse_bytes`` is missing or equals the dense file.
      sparse_path_note: whether XNNPACK runs the sparse encoding with its
        sparse kernels on this machine, or what prevents it (the layer that
        breaks the NCHW chain, the precision or the CPU;
        ``mntk.export.sparse_path``). Smaller is certain, faster is not.
    """
    tflite_bytes: Optional[int]
    packed_bytes: float
    float32_bytes: float
    rows: List[SizeRow]
    dense_bytes: Optional[int] = None
    sparse_bytes: Optional[int] = None
    gzip_bytes: Optional[int] = None
    sparse_note: str = ""
    sparse_path_note: str = ""

    @property
    def ratio(self):
        return (self.tflite_bytes / self.packed_bytes
                if self.tflite_bytes and self.packed_bytes else None)

    def to_dict(self):
        return {"tflite_bytes": self.tflite_bytes, "packed_bytes": self.packed_bytes,
                "float32_bytes": self.float32_bytes, "ratio": self.ratio,
                "dense_bytes": self.dense_bytes, "sparse_bytes": self.sparse_bytes,
                "gzip_bytes": self.gzip_bytes, "sparse_note": self.sparse_note,
                "sparse_path_note": self.sparse_path_note,
                "layers": [dataclasses.asdict(r) | {"bits": _plain(r.bits)}
                           for r in self.rows]}

    def table(self):
        lines = [f"{'layer':<28}{'kind':<14}{'bits':>8}{'sparsity':>10}{'packed B':>12}"]
        for r in self.rows:
            lines.append(f"{r.layer:<28}{r.kind:<14}{_short(r.bits):>8}"
                         f"{r.sparsity:>10.2f}{r.packed_bytes:>12.1f}")
        def b(v):
            return "-" if v is None else f"{v}"
        lines.append(f"packed {self.packed_bytes:.0f} B, TFLite {b(self.tflite_bytes)} B "
                     f"(dense {b(self.dense_bytes)} B, sparse {b(self.sparse_bytes)} B, "
                     f"gzip {b(self.gzip_bytes)} B), float32 {self.float32_bytes:.0f} B")
        if self.sparse_note:
            lines.append(f"sparse: {self.sparse_note}")
        if self.sparse_path_note:
            lines.append(f"sparse kernels: {self.sparse_path_note}")
        return "\n".join(lines)


def _plain(bits):
    try:
        return float(bits)
    except (TypeError, ValueError):
        return str(bits)


def _short(bits):
    value = _plain(bits)
    return f"{value:.2f}" if isinstance(value, float) else value


def size_report(model, tflite=None, representative_data=None,
                **estimate_kwargs) -> SizeReport:
    """Bytes of a TFLite file and the packed size of ``model`` (what cost counts).

    Args:
      model: the Keras model the file was exported from (QAT or float).
      tflite: a path, an ``ExportResult`` (``mntk.export.to_tflite``), or None.
        With an ``ExportResult`` the model is also exported in the other
        encoding (dense <-> sparse, same quantization) to fill both sizes.
      representative_data: for that re-export of a float model to int8.
      **estimate_kwargs: passed to ``mntk.cost.estimate`` (e.g. ``freebie``).
    """
    from mntk import cost
    report = cost.estimate(model, **estimate_kwargs)
    path = getattr(tflite, "path", tflite)
    if path is not None and not os.path.exists(path):
        raise FileNotFoundError(f"size_report: TFLite file {path!r} does not exist; "
                                "export it with mntk.export.to_tflite first.")
    rows = [SizeRow(layer=r.layer, kind=r.kind, bits=r.bits,
                    sparsity=float(r.sparsity or 0.0),
                    packed_bytes=float(r.param_bits) / 8.0)
            for r in report.layers if r.param_bits]
    params = sum(int(_count(w)) for w in model.trainable_weights
                 if not _is_quantizer_var(w))
    out = SizeReport(tflite_bytes=os.path.getsize(path) if path else None,
                     packed_bytes=float(report.param_bits) / 8.0,
                     float32_bytes=4.0 * params, rows=rows)
    if path is None:
        return out
    with open(path, "rb") as f:
        content = f.read()
    out.gzip_bytes = len(gzip.compress(content, compresslevel=9, mtime=0))
    from mntk.export.diagnostics import tensor_summary
    is_sparse = tensor_summary(content)["sparse"] > 0
    if is_sparse:
        out.sparse_bytes = len(content)
    else:
        out.dense_bytes = len(content)
        out.sparse_note = getattr(tflite, "sparse_note", "")
    quantize = getattr(tflite, "quantize", None)
    if quantize is None:
        out.sparse_note = out.sparse_note or (
            "pass the ExportResult of to_tflite (not a path) to get the other "
            "encoding's size")
        return out
    if quantize == "int8" and not tflite.qat and representative_data is None:
        out.sparse_note = ("the other encoding of a float model to int8 needs "
                           "representative_data=")
        return out
    from mntk.export.tflite import to_tflite
    with tempfile.TemporaryDirectory() as tmp:
        other = to_tflite(model, os.path.join(tmp, "other.tflite"), quantize=quantize,
                          representative_data=representative_data,
                          inference_io=tflite.inference_io, sparse=not is_sparse,
                          num_threads=tflite.num_threads, allow_float_ops=True,
                          progress=False)
    if is_sparse:
        out.dense_bytes = other.bytes
    elif other.sparse:
        out.sparse_bytes = other.bytes
    else:
        out.sparse_note = other.sparse_note
    if out.sparse_bytes is not None:
        from mntk.export.sparse_path import sparse_path_note
        out.sparse_path_note = sparse_path_note(model, quantize)
    return out


def _count(weight):
    n = 1
    for d in weight.shape:
        n *= int(d)
    return n


def _is_quantizer_var(weight):
    leaf = weight.name.split("/")[-1].split(":")[0]
    return leaf.endswith(("_wp", "_wn", "_gamma", "_range", "_lo", "_hi"))
