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
    # a legacy .h5 file whose Lambda layer would write a file when loaded
    out["marker"] = str(d / "payload_ran.txt")

    def payload(x, marker=out["marker"]):
        with open(marker, "w") as f:
            f.write("ran")
        return x

    inputs = keras.layers.Input((16, 16, 1))
    hidden = keras.layers.Lambda(payload, name="payload")(inputs)
    out["payload_h5"] = str(d / "payload.h5")
    out["payload_keras"] = str(d / "payload.keras")
    payload_model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(hidden)))
    payload_model.save(out["payload_h5"])
    payload_model.save(out["payload_keras"])
    os.remove(out["marker"])   # written while the model was built
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
     "recipe file recipes/nope.py not found"),
    ("recipe_syntax_error", lambda f: ["train", f"--config={f['syntax_recipe']}",
                                       "--workdir=/tmp/x"], "invalid syntax (syntax.py, line 1)"),
    ("recipe_raises", lambda f: ["train", f"--config={f['raising_recipe']}",
                                 "--workdir=/tmp/x"],
     "failed to load (at import or in its get_config): RuntimeError: recipe exploded"),
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
     "Unknown stage(s) ['bogus'] in --stages"),
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
    ("qat8_without_init_from", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_q8",
                                          "--config.stages=('qat8',)"],
     "set --config.init_from=PATH"),
    ("init_from_missing", lambda f: ["train", DIGITS, "--workdir=" + f["dir"] + "/w_q8m",
                                     "--config.stages=('qat8',)",
                                     "--config.init_from=/no/such.keras"],
     "init_from='/no/such.keras' does not exist"),
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
    ("evaluate_h5_payload", lambda f: ["evaluate", DIGITS, f"--model={f['payload_h5']}"],
     "layer 'payload' (Lambda) holds code that would run on load; give a model without"),
    ("evaluate_keras_payload", lambda f: ["evaluate", DIGITS,
                                          f"--model={f['payload_keras']}"],
     "layer 'payload' (Lambda) holds code"),
    ("cost_h5_payload", lambda f: ["cost", f"--model={f['payload_h5']}"], "safe_mode=False"),
    ("export_h5_payload", lambda f: ["export", f"--model={f['payload_h5']}",
                                     "--out=" + f["dir"] + "/payload.tflite"], "'payload'"),
    ("calibrate_h5_payload", lambda f: ["calibrate", DIGITS, f"--model={f['payload_h5']}",
                                        "--exit_rate=0.3"], "'payload'"),
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
    assert not os.path.exists(files["marker"]), "a model file's code ran"


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


@pytest.mark.slow
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

def run_cli(args, env=None, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
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


# The chained run's recipe: the all-stages digits config of tests/_runs.py
# (every stage module, two steps an epoch; SRIP with persistent vectors and
# adaptive label smoothing in train, smoothing in prune, pruning masks carried
# into ternary QAT and its fine-tuning). Its uninterrupted run is the one
# train_test and cli_test share, so in a whole-suite session the reference
# costs nothing. (qat8 and global pruning: the second chain below.)
RECIPE = """
import sys
sys.path.insert(0, {tests!r})
import _runs


def get_config(arg=None):
    return _runs.{call}
"""
STAGE_DIRS = {"train": "0_train", "export": "1_export", "early_exit": "2_early_exit",
              "prune": "3_prune", "quantize": "4_quantize", "finetune": "5_finetune",
              "prune_exits": "6_prune_exits"}
# Where each run of the chain is SIGKILLed (mntk.train.callbacks.KillAt), in
# turn; each rerun resumes from the kill before it. ALL_KILLS kills every
# training stage at an epoch boundary ("E:end"; "train_end": after the fit,
# before the stage is marked done, so the rerun goes straight to its figures)
# and mid-epoch ("E:B"), with and without a backup to resume from (early exit
# before any: its new heads are initialised again). Export trains nothing.
ALL_KILLS = ["train:0:end", "train:1:0",
             "early_exit:0:0", "early_exit:0:end",
             "prune:0:0", "prune:0:end",
             "quantize:0:1", "quantize:0:end",
             "finetune:0:0", "finetune:train_end",
             "prune_exits:0:0", "prune_exits:0:end"]
# CI kills each training stage once and each kind of point at least once
# (7 processes instead of 13: each costs a TensorFlow start and a model load):
# mid-epoch with a backup (train:1:0 resumes through train:0:end's backup, so
# it covers that point's rerun too), mid-epoch before any backup (early exit's
# new heads, prune_exits), an epoch boundary with pruning masks and with
# quantizer variables in the backup, and train_end. MNTK_KILLS=all runs ALL_KILLS.
CI_KILLS = ["train:1:0", "early_exit:0:0", "prune:0:end", "quantize:0:end",
            "finetune:train_end", "prune_exits:0:0"]
KILLS = ALL_KILLS if os.environ.get("MNTK_KILLS") == "all" else CI_KILLS


def saved_state(path):
    """(model variables in the model's order, optimizer variables in the
    optimizer's order) of a saved .keras or .h5 model: names aside, which a
    process that skipped finished stages numbers differently."""
    import io
    import zipfile

    import h5py
    from mntk.serialization import load_model
    weights = [v.numpy() for v in load_model(path, compile=False).weights]
    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as z, \
                h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
            group = f.get("optimizer/vars")
            slots = [group[str(i)][()] for i in range(len(group))] if group else []
    else:
        with h5py.File(path, "r") as f:
            group = f.get("optimizer_weights")
            names = group.attrs["weight_names"] if group is not None else []
            slots = [group[n.decode() if isinstance(n, bytes) else n][()] for n in names]
    return weights, slots


def assert_same_state(a, b, what, optimizer=True):
    (wa, sa), (wb, sb) = saved_state(a), saved_state(b)
    assert len(wa) == len(wb) and len(sa) == len(sb), what
    assert bool(sa) == optimizer, f"{what}: optimizer state saved: {bool(sa)}"
    for i, (x, y) in enumerate(zip(wa + sa, wb + sb)):
        np.testing.assert_array_equal(x, y, err_msg=f"{what}: variable {i}")


def epochs(config, stage):
    return int(config[stage].get("epochs") or config.train.epochs)


def assert_kill_point(workdir, point, config, stage_dirs):
    """The run died where ``point`` says, with the stage's backup as expected."""
    from mntk.train import saved_epoch
    stage, *where = point.split(":")
    folder = os.path.join(workdir, "stages", stage_dirs[stage])
    assert not os.path.exists(os.path.join(folder, "summary.json")), point
    backup = os.path.join(folder, "backup")
    if where == ["train_end"]:    # every epoch logged and backed up
        with open(os.path.join(folder, "history.csv")) as f:
            assert len(f.read().strip().splitlines()) == 1 + epochs(config, stage), point
        assert saved_epoch(backup) == epochs(config, stage), point
    else:
        epoch, batch = where
        assert saved_epoch(backup) == int(epoch) + (batch == "end"), point


def kill_chain(recipe, workdir, kills, config, stage_dirs):
    """The recipe through the CLI into ``workdir``, SIGKILLed at each of
    ``kills`` in turn and rerun after each, then run to its end."""
    # as many intra-op threads as this process (one under pytest-xdist):
    # float sums split over threads may round differently
    import tensorflow as tf
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    env = {"TF_NUM_INTRAOP_THREADS": str(threads)} if threads else {}
    for point in kills + [None]:
        proc = run_cli(["train", f"--config={recipe}", f"--workdir={workdir}"],
                       env=dict(env, **({"MNTK_TEST_KILL_AT": point} if point else {})))
        _, err = proc.communicate(timeout=900)
        if point is None:
            assert proc.returncode == 0, err[-2000:]
        else:
            assert proc.returncode == -signal.SIGKILL, f"{point}: {err[-2000:]}"
            assert_kill_point(workdir, point, config, stage_dirs)


def json_diff(a, b, path=""):
    """The paths where two JSON values differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b), key=str)
                for d in json_diff(a.get(key), b.get(key), f"{path}.{key}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in json_diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [(path, a, b)]


def assert_same_run(straight, killed, config, stage_dirs, trained_models):
    """Every stage's history rows and trained model (``trained_models``:
    stage -> (file, has optimizer state)), the TFLite files, calibration and
    summaries of the two work directories are equal, bit for bit."""
    for stage, folder in stage_dirs.items():
        a, b = (os.path.join(w, "stages", folder) for w in (straight, killed))
        if stage != "export":
            with open(os.path.join(a, "history.csv")) as f, \
                    open(os.path.join(b, "history.csv")) as g:
                rows = f.read()
                assert rows == g.read(), stage
            assert len(rows.strip().splitlines()) == 1 + epochs(config, stage), stage
        trained, optimizer = trained_models.get(stage, (None, True))
        trained = trained or ("model.h5" if os.path.exists(os.path.join(a, "model.h5"))
                              else "model.keras")
        assert_same_state(os.path.join(a, trained), os.path.join(b, trained), stage, optimizer)
        with open(os.path.join(a, "summary.json")) as f, \
                open(os.path.join(b, "summary.json")) as g:
            x, y = json.load(f), json.load(g)
            assert x == y, (stage, json_diff(x, y))
    names = sorted(n for n in os.listdir(straight) if n.endswith(".tflite"))
    assert names and names == sorted(n for n in os.listdir(killed) if n.endswith(".tflite"))
    for name in names + ["calibration.json", "summary.json"]:
        if not os.path.exists(os.path.join(straight, name)):
            continue
        with open(os.path.join(straight, name), "rb") as f, \
                open(os.path.join(killed, name), "rb") as g:
            x, y = f.read(), g.read()
        if name.endswith(".json"):
            x, y = json.loads(x), json.loads(y)
            x.pop("seconds", None), y.pop("seconds", None)
            assert x == y, (name, json_diff(x, y))
        assert x == y, name
    final = "model.h5" if os.path.exists(os.path.join(straight, "model.h5")) else "model.keras"
    assert_same_state(os.path.join(straight, final), os.path.join(killed, final),
                      "final model")


@pytest.mark.slow
@pytest.mark.xdist_group("all_stages")  # the run train_test shares
def test_sigkill_in_every_stage_kind_resumes_bit_exact(tmp_path, tmp_path_factory):
    """The all-stages run, uninterrupted (in this process), against the same
    recipe run through the CLI, SIGKILLed at the points of ``KILLS`` in turn
    (each training stage once, every kind of point; ``MNTK_KILLS=all``: an
    epoch boundary and mid-epoch of each training stage) and rerun after
    each kill: every stage's weights, optimizer slots, pruning masks and
    steps, quantizer variables, history rows, calibration, TFLite files and
    summaries are equal, bit for bit (CPU)."""
    import _runs
    config, straight, _ = _runs.all_stages(tmp_path_factory)
    recipe = write(tmp_path / "resume_recipe.py", RECIPE.format(
        tests=os.path.join(ROOT, "tests"), call="all_stages_config()"))
    killed = str(tmp_path / "killed")
    kill_chain(recipe, killed, KILLS, config, STAGE_DIRS)
    # the model each stage trained (early exit: the backbone with its heads)
    assert_same_run(straight, killed, config, STAGE_DIRS,
                    {"early_exit": ("multi.keras", True),
                     "prune_exits": ("multi.keras", True)})


QAT8_PRUNE_DIRS = {"qat8": "0_qat8", "prune": "1_prune"}
# qat8 at its epoch boundary and mid-epoch; global pruning at the boundary of
# its two pruning stages (the rerun enters the second, which recomputes the
# masks and rewinds to the first's start weights: both from the backup) and
# mid-epoch in the second
# (CI: the mid-epoch kills only; each rerun resumes through the boundary
# backup the other kill stops at, so it takes the same path and more)
QAT8_PRUNE_KILLS = (["qat8:0:end", "qat8:1:0", "prune:0:end", "prune:1:0"]
                    if os.environ.get("MNTK_KILLS") == "all" else ["qat8:1:0", "prune:1:0"])


@pytest.mark.slow
@pytest.mark.xdist_group("qat8_prune")  # the run train_test shares
def test_sigkill_in_qat8_and_global_pruning_resumes_bit_exact(tmp_path, tmp_path_factory):
    """The qat8 stage (8-bit QAT of a float model given as ``init_from``,
    written here) then global magnitude pruning with rewinding, uninterrupted
    (in this process) against the same recipe SIGKILLed at
    ``QAT8_PRUNE_KILLS`` in turn: equal bit for bit, the pruning masks and
    rewind point included (they live outside the model, in the backup)."""
    import _runs
    config, straight, float_model, _ = _runs.qat8_prune(tmp_path_factory)
    killed = str(tmp_path / "killed")
    recipe = write(tmp_path / "qat8_prune_recipe.py", RECIPE.format(
        tests=os.path.join(ROOT, "tests"), call=f"qat8_prune_config({float_model!r})"))
    kill_chain(recipe, killed, QAT8_PRUNE_KILLS, config, QAT8_PRUNE_DIRS)
    # qat8 saves the float model it copies the QAT weights into (no optimizer)
    assert_same_run(straight, killed, config, QAT8_PRUNE_DIRS, {"qat8": ("model.keras", False)})
    with open(os.path.join(straight, "summary.json")) as f:
        sparsity = json.load(f)["pruning"]["sparsity"]["global"]
    assert 0.55 < sparsity < 0.65, sparsity


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.slow
def test_second_run_is_refused_then_sigint_exits_130_and_resumes(tmp_path):
    """One run, three faults in turn: a second process on the same work
    directory fails in one line naming the first (which trains on); Ctrl-C
    stops the first with exit 130 and one line; the same command resumes it
    to the end. (One run for both checks: each CLI process costs a
    TensorFlow start.)"""
    workdir = str(tmp_path / "w")
    # 20 epochs: the second process imports TensorFlow (seconds) before it
    # looks at the lock, and a 3-epoch first run can be done by then
    args = ["train", *SRIP_RUN, "--config.train.epochs=20", f"--workdir={workdir}"]
    # Ctrl-C's default action in the child: an ignored or blocked SIGINT is
    # inherited through exec (a shell without job control starts background
    # jobs with it ignored), and Python then installs no KeyboardInterrupt
    # handler: the run went on to exit 0 in two fresh-clone CI runs
    first = run_cli(args, preexec_fn=_default_sigint)
    wait_for(os.path.join(workdir, ".lock"), first)
    second = run_cli(args)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 1
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and f"in use by pid {first.pid}" in lines[0], err
    # the refused process left the first alone: it goes on training
    rows = history_rows(workdir)
    wait_for("", first, done=lambda: history_rows(workdir) > rows)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130, err[-2000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "interrupted; rerun the same command to resume" in lines[0], err
    assert history_rows(workdir) < 20
    again = run_cli(args)
    out, err = again.communicate(timeout=900)
    assert again.returncode == 0, err[-2000:]
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    assert history_rows(workdir) == 20
    # the command exits without the interpreter's teardown (mntk.cli.run):
    # TensorBoard's last epoch, written just before, is on disk
    assert tensorboard_epochs(os.path.join(workdir, "stages", "0_train")) == set(range(20))


def tensorboard_epochs(stage):
    """The epochs with an ``epoch_loss`` in a stage's TensorBoard train logs."""
    import glob

    import tensorflow as tf
    epochs = set()
    for path in glob.glob(os.path.join(stage, "tensorboard", "train", "events.out.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if any(v.tag == "epoch_loss" for v in event.summary.value):
                epochs.add(event.step)
    return epochs


# ------------------------------------------------------- in-process resumes

class StopAfter:
    """A callback that raises KeyboardInterrupt after ``n`` training batches."""

    def __new__(cls, n):
        from mntk.compat import keras

        class _Stop(keras.callbacks.Callback):
            seen = 0

            def on_train_batch_end(self, batch, logs=None):
                self.seen += 1
                if self.seen == n:
                    raise KeyboardInterrupt("stopped by the test")
        return _Stop()


@pytest.mark.slow
def test_fresh_srip_vectors_resume_bit_exact(tmp_path):
    """``tricks.srip.vector='fresh'`` (KAIST's form: a new random start vector
    every step): a run stopped mid-epoch and resumed draws the same vectors as
    an uninterrupted one, so weights, optimizer slots and history agree."""
    import _runs
    from mntk import train
    config = _runs.digits_config(**{
        "stages": ("train",), "data.image_size": 8, "train.epochs": 2,
        "train.max_steps_per_epoch": 3, "tricks.srip.vector": "fresh",
        "tricks.srip.gram": "fan_in", "tricks.srip.squared": True})
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.run(config, straight)
    with pytest.raises(KeyboardInterrupt):
        train.run(config, resumed, extra_callbacks=[StopAfter(3 + 2)])   # epoch 1, batch 1
    assert train.saved_epoch(os.path.join(resumed, "stages", "0_train", "backup")) == 1
    train.run(config, resumed)
    a, b = (os.path.join(w, "stages", "0_train") for w in (straight, resumed))
    assert_same_state(os.path.join(a, "model.keras"), os.path.join(b, "model.keras"), "train")
    with open(os.path.join(a, "history.csv")) as f, open(os.path.join(b, "history.csv")) as g:
        assert f.read() == g.read()


def test_kill_point_spec_is_checked():
    from mntk.train.callbacks import KillAt
    from mntk.train.errors import RecipeError
    for good in ("train:0:3", "prune:1:end", "quantize:train_end"):
        KillAt(good, "train")
    for bad in ("train", "train:x:1", "train:1", "train:1:2:3"):
        with pytest.raises(RecipeError, match="MNTK_TEST_KILL_AT"):
            KillAt(bad, "train")


def test_history_rows_beyond_the_backup_are_cut(tmp_path):
    from mntk.train.fit import keep_history_rows, read_history
    path = write(tmp_path / "history.csv", "epoch,loss\n0,1.5\n1,1.25\n2,1.0\n")
    keep_history_rows(path, 2)
    assert read_history(path) == {"epoch": [0.0, 1.0], "loss": [1.5, 1.25]}
    keep_history_rows(path, 5)       # fewer rows than that: left alone
    assert read_history(path)["epoch"] == [0.0, 1.0]


# ------------------------------------------------------------ a full disk

# (steps run eagerly: these runs check the files a run writes, and tracing
# cost more than their two steps)
TINY = [DIGITS, "--config.stages=('train',)", "--config.train.epochs=1",
        "--config.train.max_steps_per_epoch=2", "--config.data.image_size=8",
        "--config.verbose=0", "--config.run_eagerly=True"]


def one_error_line(capsys):
    _, err = capsys.readouterr()
    lines = [l for l in err.splitlines() if l.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_fails_in_one_line_and_resumes_once_space_is_freed(tmp_path, capsys):
    """Writes that really fail with ENOSPC: three files the run writes (the
    epoch's history row, the stage's model, the stage's summary) are links to
    /dev/full, where every write fails so. Each gives one line naming the full
    disk and the fix; removing the link ("freeing space") lets the same
    command go on, and the last one finishes."""
    workdir = tmp_path / "w"
    stage = workdir / "stages" / "0_train"
    stage.mkdir(parents=True)
    full = [stage / "history.csv", stage / "model.keras", stage / "summary.json.tmp"]
    for path in full:
        os.symlink("/dev/full", path)
    argv = ["mntk", "train", *TINY, f"--workdir={workdir}"]
    for path in full:
        assert cli.main(argv) == 1, path
        line = one_error_line(capsys)
        assert f"no space left on the disk of {workdir}" in line, line
        assert "free space" in line and "rerun the same command to resume" in line, line
        assert not os.path.exists(workdir / ".lock")
        os.remove(path)
    assert cli.main(argv) == 0, capsys.readouterr().err
    with open(stage / "summary.json") as f:
        assert json.load(f)["history"]["loss"]


@pytest.mark.slow
def test_nearly_full_disk_stops_before_writing_and_resumes(tmp_path, capsys, monkeypatch):
    """Under the space an epoch's files need, the run stops before writing
    them (h5py on a full disk prints a traceback per object and can crash),
    in one line giving the free and needed space; with space it resumes."""
    import collections
    from mntk.train import disk
    workdir = tmp_path / "w"
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 5 << 20))
    argv = ["mntk", "train", *TINY, "--config.train.epochs=2", f"--workdir={workdir}"]
    assert cli.main(argv) == 1
    line = one_error_line(capsys)
    assert "has 5.0 MiB free, under the" in line and "saving epoch 0 needs" in line, line
    assert "rerun the same command to resume" in line
    monkeypatch.undo()
    assert cli.main(argv) == 0, capsys.readouterr().err
