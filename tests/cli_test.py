"""The mntk command line: subcommands, config overrides, one-line errors."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mntk(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "mntk.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(result):
    """stderr lines that come from mntk (TensorFlow's start-up chatter aside)."""
    return [l for l in result.stderr.splitlines() if l.startswith("mntk")]


@pytest.mark.parametrize("args, expected", [
    (["frobnicate"], "unknown subcommand 'frobnicate'"),
    (["train", "--config=recipes/digits.py"], "workdir"),
    (["train", "--config=recipes/digits.py", "--workdir=/tmp/x", "--config.train.epochz=3"],
     "epochz"),
    (["train", "--config=recipes/no_such_recipe.py", "--workdir=/tmp/x"], "no_such_recipe"),
    (["cost", "--model=/no/such/model.keras"], "no such file: /no/such/model.keras"),
    (["export", "--model=/no/such.keras", "--out=/tmp/x.tflite", "--quantize=int4"], "int4"),
])
def test_bad_command_lines_give_one_clear_line(args, expected):
    result = mntk(*args)
    assert result.returncode in (1, 2), result.stderr
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_subcommands_and_flags():
    top = mntk("--help")
    assert top.returncode == 0
    for name in ("train", "evaluate", "export", "cost", "calibrate", "report"):
        assert name in top.stdout
    sub = mntk("train", "--help")
    assert sub.returncode == 0
    assert "--workdir" in sub.stdout and "--config" in sub.stdout


def test_config_override_reaches_the_model():
    """`cost` of the recipe's model: halving the width must shrink the count."""
    wide = json.loads(mntk("cost", "--config=recipes/digits.py", "--json").stdout)
    narrow = json.loads(mntk("cost", "--config=recipes/digits.py", "--json",
                             "--config.model.kwargs.width=8").stdout)
    count = lambda r: sum(row["param_bits"] for row in r["layers"]) / 32  # noqa: E731
    assert count(narrow) < 0.5 * count(wide)
