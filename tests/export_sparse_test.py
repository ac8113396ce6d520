"""Sparse TFLite export of pruned models: encoding, fallback note, parity, sizes."""
import gzip

import numpy as np
import pytest

from mntk import export
from mntk.compat import keras

layers = keras.layers


def _digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return x, digits.target.astype("int64")


def _cnn():
    """Stem conv-BN-ReLU, then wide 1x1 convs (the tensors pruning makes sparse), GAP,
    Dense: the layer kinds of a pruned MobileNet block stack."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.Conv2D(64, 1, use_bias=False, name="pw1")(x)
    x = layers.ReLU()(layers.BatchNormalization(momentum=0.9)(x))
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(96, 1, activation="relu", name="pw2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="pruned_cnn")


def _prune(model, fraction=0.75):
    """Zero the smallest |w| of each 1x1 conv and Dense kernel (magnitude pruning)."""
    for layer in model.layers:
        if (isinstance(layer, layers.Dense) or type(layer) is layers.Conv2D
                and layer.kernel_size == (1, 1)):
            weights = layer.get_weights()
            kernel = weights[0]
            cut = np.sort(np.abs(kernel).ravel())[int(fraction * kernel.size)]
            weights[0] = np.where(np.abs(kernel) < cut, 0.0, kernel)
            layer.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def pruned():
    keras.utils.set_random_seed(0)
    x, y = _digits()
    model = _cnn()
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=8, batch_size=32, verbose=0)
    _prune(model)
    # Recover with the zeros held (one-shot pruning + masked fine-tuning): a
    # clear winner per sample, so int8 rounding rarely flips the top-1.
    kernels = [layer.kernel for layer in model.layers
               if getattr(layer, "kernel", None) is not None]
    masks = [(k.numpy() != 0).astype("float32") for k in kernels]
    hold = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_: [
        k.assign(k * m) for k, m in zip(kernels, masks)])
    model.fit(x[:1400], y[:1400], epochs=4, batch_size=32, verbose=0,
              callbacks=[hold])
    return model, (x[1400:], y[1400:])


def test_is_pruned_counts_exact_zeros(pruned):
    model, _ = pruned
    zeros = np.mean(model.get_layer("pw2").kernel.numpy() == 0.0)
    assert zeros == pytest.approx(0.75, abs=0.01)
    assert export.is_pruned(model)
    keras.utils.set_random_seed(1)
    assert not export.is_pruned(_cnn())


def test_pruned_float_export_is_sparse_and_exact(pruned, tmp_path, capfd):
    model, (x, y) = pruned
    sparse = export.to_tflite(model, tmp_path / "sparse.tflite", progress=False)
    dense = export.to_tflite(model, tmp_path / "dense.tflite", sparse=False,
                             progress=False)
    assert sparse.sparse and not dense.sparse and sparse.sparse_note == ""
    # Its stem is a stride-1 conv on 1 channel: XNNPACK's sparse kernels need
    # a 3x3 stride-2 conv on 3 channels first, and the one-line note says so.
    stem = model.layers[1].name
    assert f"'{stem}'" in sparse.sparse_path_note
    assert "3x3 stride 2 on 3 channels" in sparse.sparse_path_note
    assert sparse.sparse_path_note in capfd.readouterr().err
    # 3/4 of the 1x1 and Dense weights are gone; indices cost less than values.
    kernels = sum(model.get_layer(n).kernel.numpy().size for n in ("pw1", "pw2", "logits"))
    assert dense.bytes - sparse.bytes > 0.4 * 4 * kernels
    parity = export.verify(sparse, model, (x, y))
    assert parity.interpreter == {"delegate": "xnnpack", "num_threads": 1}
    assert parity.agreement == 1.0
    assert parity.max_abs_diff < 1e-4
    reference = export.verify(sparse, model, (x, y), delegate="none")
    assert reference.agreement == 1.0 and reference.max_abs_diff < 1e-4


@pytest.mark.slow
def test_pruned_int8_export_is_sparse_or_says_why(pruned, tmp_path, capfd):
    model, (x, y) = pruned
    result = export.to_tflite(model, tmp_path / "int8.tflite", quantize="int8",
                              representative_data=x[:200], progress=False)
    err = capfd.readouterr().err
    if result.sparse:
        assert result.sparse_note == ""
    else:
        # The dense fallback is never silent: the note names the reason.
        assert "XNNPACK" in result.sparse_note or "sparse enough" in result.sparse_note
        assert "sparse export dropped" in err and result.sparse_note in err
    parity = export.verify(result, model, (x, y))
    assert parity.accuracy_keras > 0.8  # a trained model, not near-tied logits
    assert parity.agreement >= 0.99


def test_sparse_request_on_a_dense_model_notes_the_dense_file(tmp_path, capfd):
    keras.utils.set_random_seed(2)
    model = _cnn()
    result = export.to_tflite(model, tmp_path / "d.tflite", sparse=True,
                              progress=False)
    assert not result.sparse
    assert "sparse enough" in result.sparse_note
    assert "sparse export dropped" in capfd.readouterr().err


def test_size_report_gives_dense_sparse_and_gzip_sizes(pruned, tmp_path):
    model, _ = pruned
    result = export.to_tflite(model, tmp_path / "s.tflite", progress=False)
    report = export.size_report(model, result)
    with open(result.path, "rb") as f:
        content = f.read()
    assert report.sparse_bytes == result.bytes == report.tflite_bytes
    assert report.gzip_bytes == len(gzip.compress(content, compresslevel=9, mtime=0))
    assert report.dense_bytes > report.sparse_bytes
    dense = export.to_tflite(model, tmp_path / "d.tflite", sparse=False, progress=False)
    assert report.dense_bytes == dense.bytes
    text = report.table()
    assert f"sparse {report.sparse_bytes} B" in text and "gzip" in text
    assert report.sparse_path_note == result.sparse_path_note != ""
    assert f"sparse kernels: {report.sparse_path_note}" in text
