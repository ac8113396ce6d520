"""mntk.load_model round-trips every quantization scheme (h5) with identical outputs."""
import numpy as np
import pytest

import mntk
import mntk.quantization as mq
from _quantization_helpers import compile_model, digits, tiny_model


@pytest.mark.parametrize("scheme", ["ternary", "learned", "binary", "int8"])
def test_quantized_model_saves_and_loads_with_same_outputs(scheme, tmp_path):
    chosen = {"ternary": mq.TernaryScheme(), "binary": mq.BinaryScheme(),
              "learned": mq.LearnedPrecisionScheme(init_bits=4), "int8": "int8"}[scheme]
    x, y = digits(128)
    q = compile_model(mq.quantize(tiny_model(), scheme=chosen))
    q.fit(x, y, epochs=1, batch_size=32, verbose=0)
    path = tmp_path / "q.h5"
    q.save(path)
    loaded = mntk.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), q.predict(x, verbose=0))
    for name, kernel in mq.quantized_weights(q).items():
        np.testing.assert_array_equal(mq.quantized_weights(loaded)[name], kernel)
