"""Smoke runs of every recipe in ``recipes/``, each run once, through the
``mntk`` command line started from a directory outside the repository (so
nothing resolves through the working directory: a recipe that imports
``recipes`` fails here): OSI and Texas through the installed console script
in a process of their own, the others through ``mntk.cli.main`` in the test
process (the same parsing and runner; measured on one core, their own process
cost 1-13 CPU-s more each, mostly importing TensorFlow again; OSI's and Texas'
runs did not get cheaper in-process). Each runs its whole stage list on digits
(16x16 RGB, the smoke configs' size), and the checks show the pipeline really ran:
loss finite and falling, the recipe's techniques active (SRIP logged, sparsity
reached, exit rate reported, bits reported), TFLite exported and verified with
LiteRT, cost report written."""
import ast
import contextlib
import importlib
import io
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mntk.train.summary import read_stage

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = ("kaist_cifar100", "osi_cifar100", "ttq_cifar10", "ternary_cifar100",
           "texas_eic_imagenet")
#: the recipes run by the installed console script in a process of their own
CONSOLE_SCRIPT = ("osi_cifar100", "texas_eic_imagenet")


def per_recipe(*names):
    """Parameters that keep each recipe's tests on one pytest-xdist worker,
    so its smoke run (cached per process) runs once."""
    return [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names]


def _console_script():
    script = pathlib.Path(sys.executable).with_name("mntk")
    if not script.exists():
        pytest.fail(f"no installed mntk console script next to {sys.executable}; "
                    "install the package (pip install -e .) first")
    return str(script)


_RUNS = {}


def smoke_run(name, tmp_path_factory):
    """Run a recipe's smoke config once per session through the command line
    (the console script for ``CONSOLE_SCRIPT``, else ``mntk.cli.main``); later
    tests reuse it. (config, workdir, summary.json as a dict)."""
    if name not in _RUNS:
        config = importlib.import_module(f"recipes.{name}").get_config("smoke")
        base = tmp_path_factory.mktemp(name)
        outside = base / "elsewhere"
        outside.mkdir()
        workdir = base / "run"
        args = ["train", f"--config={ROOT / 'recipes' / name}.py:smoke",
                f"--workdir={workdir}", "--config.verbose=0"]
        if name in CONSOLE_SCRIPT:
            env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
            if os.environ.get("PYTEST_XDIST_WORKER"):
                env["TF_NUM_INTRAOP_THREADS"] = "1"   # a worker per core: one thread each
            result = subprocess.run([_console_script(), *args], cwd=outside, env=env,
                                    capture_output=True, text=True, timeout=900)
            assert result.returncode == 0, result.stderr[-4000:]
        else:
            from mntk import cli
            from mntk.compat import keras
            here, err = os.getcwd(), io.StringIO()
            os.chdir(outside)
            try:
                with contextlib.redirect_stderr(err):
                    status = cli.main(["mntk", *args])
            finally:
                os.chdir(here)
                keras.backend.clear_session()   # the run's graphs: the worker goes on
            assert status == 0, err.getvalue()[-4000:]
        assert not list(outside.iterdir()), "the run wrote into the working directory"
        summary = json.loads((workdir / "summary.json").read_text())
        _RUNS[name] = (config, str(workdir), summary)
    return _RUNS[name]


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_imports_nothing_from_recipes(name):
    tree = ast.parse((ROOT / "recipes" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "recipes", f"{name} imports recipes"
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "recipes" for a in node.names), name


def stage_summary(workdir, k, name):
    return read_stage(os.path.join(workdir, "stages", f"{k}_{name}", "summary.json")).to_dict()


@pytest.mark.parametrize("name", per_recipe(*RECIPES))
def test_smoke_run_trains_exports_and_scores(name, tmp_path_factory):
    config, workdir, summary = smoke_run(name, tmp_path_factory)
    assert config.smoke and config.name.startswith(name.split("_")[0])
    # every stage ran, in order, and wrote its summary
    assert [s["name"] for s in summary["stages"]] == list(config.stages)
    for k, stage in enumerate(config.stages):
        assert os.path.exists(os.path.join(workdir, "stages", f"{k}_{stage}", "summary.json"))
    # every stage's losses are finite, and the float stage's falls epoch by epoch
    histories = [stage_summary(workdir, k, stage).get("history") or {}
                 for k, stage in enumerate(config.stages)]
    assert all(math.isfinite(v) for h in histories for v in h.get("loss", []))
    first = histories[0]["loss"]
    assert len(first) == config.train.epochs and first[-1] < first[0], first
    # cost report of the final model
    with open(os.path.join(workdir, "cost.json")) as f:
        cost = json.load(f)
    assert cost and summary["cost"]["score"] > 0 and summary["cost"]["task"] == config.cost.task
    # every TFLite file the run reports exists and agrees with Keras
    tflites = list((summary.get("tflite") or {}).values())
    if "quantization" in summary:
        tflites.append(summary["quantization"]["tflite"])
    assert tflites
    for entry in tflites:
        assert os.path.getsize(os.path.join(workdir, entry["path"])) == entry["bytes"] > 0
        # a smoke model is barely trained: where its logits are near-tied, top-1
        # agreement says little, so the logits must then be close instead
        assert entry["agreement"] >= 0.9 or entry["max_abs_diff"] < 0.5, entry


@pytest.mark.xdist_group("kaist_cifar100")
def test_kaist_srip_smoothing_cutmix_and_pruning(tmp_path_factory):
    config, workdir, summary = smoke_run("kaist_cifar100", tmp_path_factory)
    history = summary["history"]
    assert "srip" in history and all(v > 0 for v in history["srip"])
    srip = summary["tricks"]["srip"]
    assert (srip["reduction"], srip["gram"], srip["vector"]) == ("mean", "fan_in", "fresh")
    assert summary["tricks"]["adaptive_smoothing"]["epsilon"] == 0.3
    assert config.data.mix == "cutmix" and config.cost.freebie
    # global pruning: one threshold, the last stage's rate over all kernels
    assert summary["pruning"]["sparsity"]["global"] == pytest.approx(config.prune.rates[-1],
                                                                     abs=0.01)
    # pruning lowers the MicroNet score of the same net
    assert summary["pruning"]["cost"]["score"] < stage_summary(workdir, 0, "train")["cost"]["score"]


@pytest.mark.xdist_group("osi_cifar100")
def test_osi_exit_head_calibrated_and_staged(tmp_path_factory):
    _, workdir, summary = smoke_run("osi_cifar100", tmp_path_factory)
    ee = summary["early_exit"]
    assert ee["at"] == ["block4_out"] and ee["criterion"] == "max_softmax"
    assert 0.0 <= ee["exit_rate"] <= 1.0 and len(ee["exit_rates"]) == 2
    assert sum(ee["exit_rates"]) == pytest.approx(1.0)
    # a fixed threshold may let few smoke samples out: the mean cost is what the
    # exit rates make of the paths, whichever way it goes
    assert ee["ops_saved"] == pytest.approx(1 - ee["mean_ops"] / ee["backbone_ops"])
    assert ee["staged_tflite"]["agreement"] >= 0.8
    assert os.path.exists(os.path.join(workdir, "calibration.json"))
    assert ee["thresholds"] == [pytest.approx(0.2)]      # fixed, not calibrated
    backbone = stage_summary(workdir, 1, "prune")["pruning"]
    assert backbone["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
    # prune_exits: the exit head pruned on its own, the backbone's zeros held
    heads = stage_summary(workdir, 3, "prune_exits")
    assert heads["early_exit"] == ee and summary["pruning"] == heads["pruning"]
    assert heads["pruning"]["sparsity"]["global"] == pytest.approx(0.5, abs=0.01)
    assert all(name.startswith("exit_0") for name in heads["pruning"]["sparsity"]
               if name != "global")
    from mntk.serialization import load_model
    pruned = load_model(os.path.join(workdir, "stages", "1_prune", "model.keras"), compile=False)
    multi = load_model(os.path.join(workdir, "stages", "3_prune_exits", "multi.keras"),
                       compile=False)
    kernels = 0
    for layer in pruned.layers:
        for variable in layer.weights:
            if variable.shape.rank >= 2:
                twin = {v.name.split("/")[-1]: v for v in multi.get_layer(layer.name).weights}
                np.testing.assert_array_equal(twin[variable.name.split("/")[-1]].numpy() == 0,
                                              variable.numpy() == 0, err_msg=variable.name)
                kernels += 1
    assert kernels > 10


@pytest.mark.parametrize("name", per_recipe("ttq_cifar10", "ternary_cifar100"))
def test_ternary_recipes_count_ternary_bits(name, tmp_path_factory):
    _, workdir, summary = smoke_run(name, tmp_path_factory)
    q = summary["quantization"]
    assert q["scheme"] == "ternary"
    # ternary kernels: at most 2 bits (sign + mask) per weight, first/last layers
    # float; the KAIST net's depthwise kernels stay at 8 bits (the scheme's default)
    assert q["mean_weight_bits"] <= (2.0 if name == "ttq_cifar10" else 3.0)
    assert q["cost"]["score"] < summary["cost"]["score"]
    assert q["cost"]["freebie"] is False
    assert "mean_weight_bits" in q["history"]


@pytest.mark.xdist_group("texas_eic_imagenet")
def test_texas_learned_bits_fall_toward_target_then_freeze(tmp_path_factory):
    config, workdir, summary = smoke_run("texas_eic_imagenet", tmp_path_factory)
    qat8 = stage_summary(workdir, 1, "qat8")["quantization"]
    assert qat8["scheme"] == "int8"
    learned = stage_summary(workdir, 2, "quantize")["quantization"]
    finetuned = stage_summary(workdir, 3, "finetune")["quantization"]
    assert learned["scheme"] == "learned" and learned["distillation"]
    # the entry's objective: sign(M - target) * beta * M on the score, beta per phase
    target = learned["cost_target"]
    assert target["measure"] == "score" and target["relative"] is False
    assert learned["phases"] == [list(p) for p in config.quantize.phases]
    assert learned["history"]["phase_beta"] == [p[2] for p in config.quantize.phases]
    # it started from the qat8 model's ranges
    assert os.path.exists(os.path.join(workdir, "stages", "1_qat8", "quantizer_ranges.json"))
    bits = learned["history"]["mean_weight_bits"]
    assert bits[-1] < 8.0 and bits[-1] <= bits[0]
    assert learned["mean_activation_bits"] is not None
    # finetune: bit widths frozen, so the mean bits do not move
    assert finetuned["frozen_bit_widths"] > 0 and finetuned["swa"]["cycle"] == 1
    assert finetuned["mean_weight_bits"] == pytest.approx(learned["mean_weight_bits"])
    assert summary["quantization"]["frozen_bit_widths"] == finetuned["frozen_bit_widths"]
    assert summary["cost"]["task"] == "imagenet"


def test_config_arguments():
    from recipes import ttq_cifar10
    assert ttq_cifar10.get_config("resnet56").model.name == "preact_resnet56"
    both = ttq_cifar10.get_config("resnet32,smoke")
    assert both.model.name == "preact_resnet32" and both.smoke
    with pytest.raises(ValueError, match="resnet18"):
        ttq_cifar10.get_config("resnet18")
    for name in RECIPES:
        full = importlib.import_module(f"recipes.{name}").get_config()
        assert not full.smoke and full.data.name in ("cifar10", "cifar100", "imagenet2012")
        assert full.train.max_steps_per_epoch == 0
