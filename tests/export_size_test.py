"""size_report: TFLite bytes next to cost's packed bytes."""
import pytest

import mntk
import mntk.quantization as mq
from _quantization_helpers import tiny_model


@pytest.mark.slow
def test_size_report_matches_cost_param_bits(tmp_path):
    q = mq.quantize(tiny_model(), scheme=mq.TernaryScheme(), skip=[])
    result = mntk.export.to_tflite(q, tmp_path / "t.tflite", quantize="int8",
                                   progress=False)
    report = mntk.export.size_report(q, result)
    assert report.tflite_bytes == result.bytes
    assert report.packed_bytes == pytest.approx(mntk.cost.estimate(q).param_bits / 8)
    assert report.packed_bytes < report.tflite_bytes
    assert sum(r.packed_bytes for r in report.rows) == pytest.approx(report.packed_bytes)
    with pytest.raises(FileNotFoundError, match="to_tflite"):
        mntk.export.size_report(q, tmp_path / "missing.tflite")
