"""The README tour is a test: its ```python blocks run in order, as written,
and the figures the README states hold (issue 14)."""
import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_the_tour_blocks():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert any("keras.applications" in b for b in blocks)  # bring your own model


def test_cli_examples_name_files_the_recipe_writes():
    """The digits recipe ends in a QAT stage, which the runner saves as
    model.h5 (mntk.train.saving.model_filename); the README's CLI lines read it."""
    from mntk.train.saving import model_filename
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    cli = re.findall(r"bin/mntk (?:cost|export) --model=(\S+)", text)
    assert cli, "no CLI examples"

    for path in cli:
        assert path.startswith("runs/digits/")
        assert os.path.basename(path) in ("model.h5", "model.keras")
    import mntk.quantization as mq
    from _quantization_helpers import tiny_model
    assert model_filename(mq.quantize(tiny_model(), scheme="int8")) == os.path.basename(cli[0])


@pytest.mark.slow
def test_readme_tour_runs_and_its_figures_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme"}
    for block in python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)
    model, accuracy = namespace["model"], namespace["accuracy"]
    assert accuracy > 0.9
    # The tour's model is untouched by add_exits/compile_exits(freeze)/prune/quantize.
    assert all(layer.trainable for layer in model.layers)
    assert namespace["ops_saved"] > 0, namespace["ops_saved"]
    assert namespace["pruned_accuracy"] >= accuracy - 0.02, ("pruned", namespace["pruned_accuracy"], accuracy)
    assert namespace["ternary_accuracy"] >= accuracy - 0.02, ("ternary", namespace["ternary_accuracy"], accuracy)
    # bring your own model: the int8 QAT copy (ranges calibrated on x32) runs.
    # Not a parity check: this random-weight MobileNetV3Small's logits are
    # constant to 7e-11 over x32; parity after a fit: tests/applications_test.py
    assert np.isfinite(namespace["byo_diff"])
    assert not any(type(l).__name__ == "TFOpLambda" for l in namespace["mine"].layers)
    assert os.path.exists("runs/ternary.tflite") and os.path.exists("runs/staged")
