"""The mntk command line: subcommands, config overrides, one-line errors.

Most cases call ``mntk.cli.main`` in this process (it builds a fresh flag set
per call); one test runs the real command in a subprocess."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest

import _runs
from mntk import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mntk(capsys, *args):
    """(exit status, stdout, stderr) of ``mntk ARGS`` run in this process."""
    status = cli.main(["mntk", *args])
    out, err = capsys.readouterr()
    return status, out, err


def error_lines(err):
    """stderr lines that come from mntk (TensorFlow's start-up chatter aside)."""
    return [l for l in err.splitlines() if l.startswith("mntk")]


@pytest.mark.parametrize("args, expected", [
    (["frobnicate"], "unknown subcommand 'frobnicate'"),
    (["train", "--config=recipes/digits.py"], "workdir"),
    (["train", "--config=recipes/digits.py", "--workdir=/tmp/x", "--config.train.epochz=3"],
     "unknown --config override field train.epochz (did you mean train.epochs?)"),
    (["train", "--config=recipes/digits.py", "--workdir=/tmp/x",
      "--config.train.learning_rate=-1"], "train.learning_rate=-1.0: must be a finite number > 0"),
    (["train", "--config=recipes/digits.py", "--workdir=/tmp/x", "--config.data.batch_size=0"],
     "data.batch_size=0: must be >= 1"),
    (["train", "--config=recipes/no_such_recipe.py", "--workdir=/tmp/x"], "no_such_recipe"),
    (["train", "--config=recipes/digits.py", "--workdir=/tmp/x", "--config.train.epochs"],
     "give a value"),
    (["cost", "--model=/no/such/model.keras"], "no such file: /no/such/model.keras"),
    (["export", "--model=/no/such.keras", "--out=/tmp/x.tflite", "--quantize=int4"], "int4"),
    (["cost"], "give --model=PATH.keras or --config=recipes/NAME.py"),
])
def test_bad_command_lines_give_one_clear_line(capsys, args, expected):
    status, _, err = mntk(capsys, *args)
    assert status in (1, 2), err
    lines = error_lines(err)
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err


def test_recipe_file_with_an_unknown_field_fails_naming_it(capsys, tmp_path):
    bad = tmp_path / "bad_recipe.py"
    bad.write_text("from recipes import digits\n\n"
                   "def get_config():\n"
                   "    c = digits.get_config()\n"
                   "    c.prune.sparsity_shedule = 'polynomial'\n"
                   "    return c\n")
    status, _, err = mntk(capsys, "train", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
    assert status == 1
    (line,) = error_lines(err)
    assert "unknown recipe field prune.sparsity_shedule (did you mean " \
           "prune.sparsity_schedule?)" in line
    assert not os.path.exists(tmp_path / "w" / "stages")


def test_smoke_switch_applies_the_recipes_smoke_settings():
    rest, overrides = cli.split_overrides(
        ["--config=recipes/ttq_cifar10.py:resnet32", "--config.smoke=True",
         "--config.train.epochs=1"])
    assert rest == ["--config=recipes/ttq_cifar10.py:resnet32,smoke"]
    assert overrides == [("train.epochs", "1")]
    rest, _ = cli.split_overrides(["--config=recipes/digits.py", "--config.smoke=true"])
    assert rest == ["--config=recipes/digits.py:smoke"]


def test_help_lists_subcommands_and_flags(capsys):
    status, out, _ = mntk(capsys, "--help")
    assert status == 0
    for name in ("train", "evaluate", "export", "cost", "calibrate", "report"):
        assert name in out
    status, out, _ = mntk(capsys, "train", "--help")
    assert status == 0 and "--workdir" in out and "--config" in out


@pytest.mark.slow
def test_config_override_reaches_the_model(capsys):
    """`cost` of the recipe's model: halving the width must shrink the count."""
    reports = []
    for extra in ([], ["--config.model.kwargs.width=8"]):
        status, out, err = mntk(capsys, "cost", "--config=recipes/digits.py", "--json", *extra)
        assert status == 0, err
        reports.append(json.loads(out))
    count = lambda r: sum(row["param_bits"] for row in r["layers"]) / 32  # noqa: E731
    assert count(reports[1]) < 0.5 * count(reports[0])


@pytest.mark.xdist_group("all_stages")  # the run train_test shares
def test_human_summary_of_a_run(tmp_path_factory):
    config, workdir, summary = _runs.all_stages(tmp_path_factory)
    text = cli.format_summary(summary)
    with open(os.path.join(workdir, "summary.json")) as f:
        on_disk = json.load(f)
    on_disk["seconds"] = summary.seconds    # a rerun of the shared run rewrites it
    assert cli.format_summary(on_disk) == text
    assert f"Keras test accuracy      {100 * summary.accuracy:6.2f}%" in text
    assert f"mean weight bits {summary.quantization.mean_weight_bits:.2f}" in text
    assert "early exit at block1_out" in text and "pruned to 50%" in text
    # the prune stage's sparse float file (the run's last pruning figures are
    # prune_exits', which exports none)
    pruned = summary.stages[3].pruning.tflite
    assert summary.pruning.tflite is None and "TFLite pruned float" not in text
    text = cli.format_summary(dataclasses.replace(summary, pruning=summary.stages[3].pruning))
    assert (f"TFLite pruned float      {100 * pruned.accuracy_tflite:6.2f}%  agreement 100.00%  "
            f"{pruned.bytes:,} bytes, sparse-encoded") in text


@pytest.mark.slow
def test_the_command_runs_as_a_process():
    """The real `python -m mntk.cli`: a bad override fails in one line."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    result = subprocess.run(
        [sys.executable, "-m", "mntk.cli", "train", "--config=recipes/digits.py",
         "--workdir=/tmp/mntk_cli_test_never_written", "--config.train.epochz=3"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert "train.epochz (did you mean train.epochs?)" in line
