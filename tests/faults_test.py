"""Bad inputs and faults through the CLI: each fails with a non-zero exit, no
traceback and one stderr line naming the problem; killed runs resume exactly.

The table runs ``mntk.cli.main`` in this process (a fresh flag set per call,
the same code path as the command); the kill/resume tests run the real
command in a subprocess and kill it.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mntk import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "--config=recipes/digits.py"
FAST = ["--config.stages=('train',)", "--config.train.epochs=1",
        "--config.train.max_steps_per_epoch=2", "--config.verbose=0"]


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files and one small good model (16x16x1 digits input)."""
    from mntk.compat import keras
    d = tmp_path_factory.mktemp("faults")
    rng = np.random.default_rng(0)
    out = {"dir": str(d)}
    out["random_keras"] = write(d / "random.keras", rng.bytes(2000), "wb")
    out["random_h5"] = write(d / "random.h5", rng.bytes(2000), "wb")
    out["random_tflite"] = write(d / "random.tflite", rng.bytes(2000), "wb")
    out["json_model"] = write(d / "model.json", json.dumps({"class_name": "Nope"}))
    model = keras.Sequential([keras.layers.Input((16, 16, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(10)])
    out["good"] = str(d / "good.keras")
    model.save(out["good"])
    with open(out["good"], "rb") as f:
        out["truncated_keras"] = write(d / "truncated.keras", f.read()[:500], "wb")
    out["syntax_recipe"] = write(d / "syntax.py", "def get_config(:\n    pass\n")
    out["raising_recipe"] = write(d / "raising.py", "def get_config():\n"
                                  "    raise RuntimeError('recipe exploded')\n")
    out["unknown_recipe"] = write(d / "unknown.py", "from recipes import digits\n"
                                  "def get_config():\n    c = digits.get_config()\n"
                                  "    c.train.epochz = 3\n    return c\n")
    out["no_smoke_recipe"] = write(d / "nosmoke.py", "from recipes import digits\n"
                                   "def get_config():\n    return digits.get_config()\n")
    os.makedirs(d / "empty")
    return out


def workdir(files, name, **setup):
    """A work directory under the module's folder, set up as a test case needs."""
    path = os.path.join(files["dir"], "work", name)
    os.makedirs(path, exist_ok=True)
    if "lock" in setup:
        write(os.path.join(path, ".lock"), json.dumps(setup["lock"]))
    if "config" in setup:
        write(os.path.join(path, "config.json"), json.dumps(setup["config"]))
    if "backup" in setup:
        backup = os.path.join(path, "stages", "0_train", "backup", "chief")
        os.makedirs(backup, exist_ok=True)
        write(os.path.join(backup, "checkpoint"), 'model_checkpoint_path: "ckpt-1"\n')
        write(os.path.join(backup, "ckpt-1.index"), setup["backup"])
        write(os.path.join(backup, "ckpt-1.data-00000-of-00001"), setup["backup"])
    return path


def digits_config_json(**changes):
    from mntk.train import schema
    from recipes import digits
    config = schema.to_dict(schema.resolve(digits.get_config(), [
        ("stages", "('train',)"), ("train.epochs", "1"), ("train.max_steps_per_epoch", "2"),
        ("verbose", "0")]))
    for path, value in changes.items():
        node = config
        *parts, last = path.split(".")
        for p in parts:
            node = node[p]
        node[last] = value
    return config


# (case id, argv builder(files) -> list, expected text in the one error line)
CASES = [
    ("unknown_subcommand", lambda f: ["frobnicate"], "unknown subcommand 'frobnicate'"),
    ("no_workdir", lambda f: ["train", DIGITS], "--workdir must have a value"),
    ("no_config", lambda f: ["train", "--workdir=/tmp/x"], "--config must have a value"),
    ("missing_recipe", lambda f: ["train", "--config=recipes/nope.py", "--workdir=/tmp/x"],
     "nope.py"),
    ("recipe_syntax_error", lambda f: ["train", f"--config={f['syntax_recipe']}",
                                       "--workdir=/tmp/x"], "invalid syntax (syntax.py, line 1)"),
    ("recipe_raises", lambda f: ["train", f"--config={f['raising_recipe']}",
                                 "--workdir=/tmp/x"], "recipe exploded"),
    ("recipe_unknown_field", lambda f: ["train", f"--config={f['unknown_recipe']}",
                                        "--workdir=/tmp/x"],
     "unknown recipe field train.epochz (did you mean train.epochs?)"),
    ("smoke_without_smoke", lambda f: ["train", f"--config={f['no_smoke_recipe']}",
                                       "--workdir=/tmp/x", "--config.smoke=True"],
     "no smoke settings"),
    ("override_unknown", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                    "--config.train.epochz=3"], "did you mean train.epochs?"),
    ("override_unknown_section", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                            "--config.trian.epochs=3"], "trian.epochs"),
    ("override_without_value", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                          "--config.train.epochs"], "give a value"),
    ("lr_negative", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                               "--config.train.learning_rate=-1"], "train.learning_rate=-1.0"),
    ("lr_zero", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                           "--config.train.learning_rate=0"], "must be a finite number > 0"),
    ("lr_nan", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                          "--config.prune.learning_rate=nan"], "prune.learning_rate=nan"),
    ("lr_text", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                           "--config.train.learning_rate=fast"], "expected a number"),
    ("srip_negative", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                 "--config.tricks.srip.coefficient=-0.01"],
     "tricks.srip.coefficient=-0.01: must be a finite number >= 0"),
    ("srip_nan", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                            "--config.tricks.srip.coefficient=nan"], "tricks.srip.coefficient"),
    ("batch_zero", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.data.batch_size=0"],
     "data.batch_size=0: must be >= 1"),
    ("batch_huge", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_batch",
                              "--config.data.batch_size=100000", *FAST],
     "exceeds the 1077 training images; lower the batch size"),
    ("epochs_negative", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                   "--config.train.epochs=-1"], "train.epochs=-1"),
    ("epochs_fraction", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                   "--config.train.epochs=2.5"], "train.epochs=2.5"),
    ("prune_target", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.prune.target=1.5"],
     "prune.target=1.5"),
    ("exit_rate", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                             "--config.early_exit.target.exit_rate=2"], "exit_rate=2.0"),
    ("optimizer", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                             "--config.train.optimizer=rmsprop"], "train.optimizer='rmsprop'"),
    ("schedule", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                            "--config.train.schedule=linear"], "train.schedule='linear'"),
    ("scheme", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.quantize.scheme=int4"],
     "quantize.scheme='int4'"),
    ("export_kind", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                               "--config.export.kinds=('float','int4')"], "'int4'"),
    ("fractions", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                             "--config.data.fractions=(0.5,0.5,0.5)"], "data.fractions"),
    ("image_size", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.data.image_size=0"],
     "data.image_size=0"),
    ("cost_task", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.cost.task=mnist"],
     "cost.task='mnist'"),
    ("strategy", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--config.strategy=warp"],
     "strategy='warp'"),
    ("unknown_stage", lambda f: ["train", DIGITS, "--workdir=/tmp/x",
                                 "--config.stages=('train','bogus')"], "Unknown stage"),
    ("stages_flag_unknown", lambda f: ["train", DIGITS, "--workdir=/tmp/x", "--stages=bogus"],
     "Unknown stage"),
    ("unknown_data_set", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_data",
                                    "--config.data.name=mnist", *FAST], "Unknown data set 'mnist'"),
    ("unknown_model", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_model",
                                 "--config.model.name=resnet999", *FAST], "Unknown model"),
    ("tfds_not_prepared", lambda f: ["train", "--config=recipes/kaist_cifar100.py",
                                     "--workdir=" + f["dir"] + "/w_tfds",
                                     "--config.data.data_dir=" + f["dir"] + "/empty"],
     "tfds build cifar100"),
    ("export_stage_on_fresh_workdir", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] +
                                                 "/w_fresh", "--stages=export"],
     "needs the model of an earlier stage"),
    ("restart_from_unknown", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_rs",
                                        "--restart_from=bogus"], "--restart_from='bogus'"),
    ("workdir_locked", lambda f: ["train", DIGITS, *FAST, "--workdir=" + workdir(
        f, "locked", lock={"pid": 1, "host": socket.gethostname()})],
     "is in use by pid 1 on host"),
    ("config_changed", lambda f: ["train", DIGITS, *FAST, "--workdir=" + workdir(
        f, "changed", config=digits_config_json(**{"train.learning_rate": 0.5}))],
     "train.learning_rate was 0.5, now 0.003"),
    ("corrupt_backup", lambda f: ["train", DIGITS, *FAST, "--workdir=" + workdir(
        f, "corrupt", backup="not a checkpoint")], "remove stages/0_train/backup"),
    ("diverged", lambda f: ["train", DIGITS, *FAST, "--workdir=" + f["dir"] + "/w_nan",
                            "--config.train.learning_rate=1e9", "--config.train.optimizer=sgd",
                            "--config.tricks.srip.enabled=False",
                            "--config.tricks.adaptive_smoothing.enabled=False"],
     "stage 'train' diverged at epoch 0"),
    ("evaluate_missing_model", lambda f: ["evaluate", DIGITS, "--model=/no/such.keras"],
     "no such file: /no/such.keras"),
    ("evaluate_random_keras", lambda f: ["evaluate", DIGITS, f"--model={f['random_keras']}"],
     "cannot load"),
    ("evaluate_random_h5", lambda f: ["evaluate", DIGITS, f"--model={f['random_h5']}"],
     "cannot load"),
    ("evaluate_truncated_keras", lambda f: ["evaluate", DIGITS,
                                            f"--model={f['truncated_keras']}"], "cannot load"),
    ("evaluate_json", lambda f: ["evaluate", DIGITS, f"--model={f['json_model']}"],
     "cannot load"),
    ("evaluate_random_tflite", lambda f: ["evaluate", DIGITS, f"--model={f['random_tflite']}"],
     "as a TFLite model"),
    ("evaluate_shape_mismatch", lambda f: ["evaluate", DIGITS, f"--model={f['good']}",
                                           "--config.data.image_size=32"],
     "expects 16x16x1 inputs, but --config's data is 32x32x1"),
    ("cost_random", lambda f: ["cost", f"--model={f['random_keras']}"], "cannot load"),
    ("cost_nothing", lambda f: ["cost"], "give --model=PATH.keras or --config"),
    ("export_bad_quantize", lambda f: ["export", f"--model={f['good']}", "--out=/tmp/x.tflite",
                                       "--quantize=int4"], "int4"),
    ("calibrate_two_targets", lambda f: ["calibrate", DIGITS, f"--model={f['good']}",
                                         "--exit_rate=0.3", "--mean_ops=1000"],
     "give exactly one of"),
    ("report_empty", lambda f: ["report", f["dir"] + "/empty"], "summary.json is missing"),
    ("report_missing", lambda f: ["report", "/no/such/dir"], "no such directory"),
]


@pytest.mark.parametrize("case, argv, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line(files, capsys, case, argv, expected):
    status = cli.main(["mntk", *argv(files)])
    _, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert status not in (0, None), err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("mntk") and expected in lines[0], lines[0]


def test_the_table_is_large():
    assert len(CASES) >= 40


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from mntk.train.workdir import WorkdirLock
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write(tmp_path / ".lock", json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with WorkdirLock(str(tmp_path)) as lock:
        with open(tmp_path / ".lock") as f:
            assert json.load(f)["pid"] == os.getpid()
        assert lock.held
    assert not os.path.exists(tmp_path / ".lock")


def test_diverged_run_keeps_the_last_good_epoch(tmp_path):
    """Epoch 0 trains, epoch 1 diverges (a kernel set to NaN): the run fails
    naming the stage, epoch and weight, and the backup still holds epoch 0."""
    import _runs
    from mntk import train
    from mntk.compat import keras
    from mntk.train.errors import DivergedError

    class Poison(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.get_layer("logits").kernel
                kernel.assign(np.full(kernel.shape, np.nan, np.float32))

    config = _runs.digits_config(**{"stages": ("train",), "train.epochs": 3,
                                    "train.max_steps_per_epoch": 2})
    with pytest.raises(DivergedError, match="stage 'train' diverged at epoch 1: "):
        train.run(config, str(tmp_path), extra_callbacks=[Poison()])
    assert train.saved_epoch(str(tmp_path / "stages" / "0_train" / "backup")) == 1
    assert not os.path.exists(tmp_path / "stages" / "0_train" / "summary.json")
    assert not os.path.exists(tmp_path / ".lock")


# ------------------------------------------------------- subprocess kills

def run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-m", "mntk.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def history_rows(workdir):
    path = os.path.join(workdir, "stages", "0_train", "history.csv")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return max(0, len(f.read().strip().splitlines()) - 1)


def wait_for(path, proc, timeout=600, done=None):
    """Until ``path`` exists (or ``done()`` is true) while ``proc`` runs."""
    done = done or (lambda: os.path.exists(path))
    start = time.time()
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early: {proc.stderr.read()[-2000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.2)


SRIP_RUN = [DIGITS, "--config.stages=('train',)", "--config.train.epochs=3",
            "--config.train.max_steps_per_epoch=4", "--config.data.batch_size=64",
            "--config.tricks.srip.enabled=True", "--config.verbose=0"]


def stage_weights(workdir):
    from mntk.serialization import load_model
    return load_model(os.path.join(workdir, "stages", "0_train", "model.keras")).get_weights()


@pytest.mark.slow
def test_sigkill_after_an_epoch_resumes_bit_exact_with_srip(tmp_path):
    """SIGKILL once epoch 1 is backed up, rerun: every weight and the history
    rows equal an uninterrupted run's, bit for bit (CPU), SRIP on."""
    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    done = run_cli(["train", *SRIP_RUN, f"--workdir={straight}"])
    proc = run_cli(["train", *SRIP_RUN, f"--workdir={killed}"])
    assert done.wait(900) == 0, done.stderr.read()[-2000:]
    # epoch 1 logged (CSVLogger runs after both backups): killed in epoch 2,
    # at its start or mid-way
    wait_for("", proc, done=lambda: history_rows(killed) >= 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli(["train", *SRIP_RUN, f"--workdir={killed}"])
    assert resumed.wait(900) == 0, resumed.stderr.read()[-2000:]
    for a, b in zip(stage_weights(straight), stage_weights(killed)):
        np.testing.assert_array_equal(a, b)
    rows = []
    for w in (straight, killed):
        with open(os.path.join(w, "stages", "0_train", "history.csv")) as f:
            rows.append(f.read().splitlines())
    assert rows[0] == rows[1]


@pytest.mark.slow
def test_sigint_exits_130_in_one_line_and_resumes(tmp_path):
    workdir = str(tmp_path / "w")
    args = ["train", *SRIP_RUN, f"--workdir={workdir}"]
    proc = run_cli(args)
    wait_for("", proc, done=lambda: history_rows(workdir) >= 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "interrupted; rerun the same command to resume" in lines[0], err
    again = run_cli(args)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-2000:]
    assert os.path.exists(os.path.join(workdir, "summary.json"))


@pytest.mark.slow
def test_two_concurrent_runs_the_second_fails_naming_the_first(tmp_path):
    workdir = str(tmp_path / "w")
    args = ["train", *SRIP_RUN, f"--workdir={workdir}"]
    first = run_cli(args)
    wait_for(os.path.join(workdir, ".lock"), first)
    second = run_cli(args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0], err
    assert first.wait(900) == 0
