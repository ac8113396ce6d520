"""Every recipe's ``:smoke`` run through the installed ``mntk`` console script,
started from a directory outside the repository (so nothing resolves through
the working directory: a recipe that imports ``recipes`` fails here)."""
import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (ROOT / "recipes").glob("*.py")
                 if p.stem not in ("__init__", "digits"))


def _console_script():
    script = pathlib.Path(sys.executable).with_name("mntk")
    if not script.exists():
        pytest.fail(f"no installed mntk console script next to {sys.executable}; "
                    "install the package (pip install -e .) first")
    return str(script)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_imports_nothing_from_recipes(name):
    tree = ast.parse((ROOT / "recipes" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "recipes", f"{name} imports recipes"
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "recipes" for a in node.names), name


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_through_the_console_script(name, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    recipe = ROOT / "recipes" / f"{name}.py"
    result = subprocess.run(
        [_console_script(), "train", f"--config={recipe}:smoke",
         f"--workdir={tmp_path / 'run'}", "--config.verbose=0"],
        cwd=outside, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary, "empty run summary"
    assert not list(outside.iterdir()), "the run wrote into the working directory"
