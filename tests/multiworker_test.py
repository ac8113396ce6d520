"""Scaling out and resuming: two MultiWorkerMirroredStrategy workers on
127.0.0.1 train to identical weights; a killed pair restarts from
BackupAndRestore (a run killed in a later stage: tests/faults_test.py)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mntk import train

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, BATCH = 2, 32

# One worker process: the digits recipe's train stage under multi_worker; it
# dumps the trained weights, and can die hard (os._exit) after `kill_after`
# batches like a preempted machine.
WORKER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from mntk import train
    from mntk.compat import keras
    from recipes import digits

    workdir, out, kill_after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    c = digits.get_config()
    c.stages = ("train",)
    c.strategy = "multi_worker"
    c.verbose = 0
    c.train.epochs = {epochs}
    c.data.batch_size = {batch}
    c.train.max_steps_per_epoch = 6

    class Die(keras.callbacks.Callback):
        seen = 0
        def on_train_batch_end(self, batch, logs=None):
            Die.seen += 1
            if Die.seen == kill_after:
                os._exit(3)

    class Dump(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            np.savez(out, *self.model.get_weights())

    train.run(c, workdir, extra_callbacks=[Die(), Dump()])
    sys.stdout.flush()
    os._exit(0)   # as the mntk command: no teardown of TensorFlow
""").format(epochs=EPOCHS, batch=BATCH)


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_pair(tmp, workdir, kill_after=0, timeout=240):
    """Start worker 0 (chief) and worker 1; return their exit codes and weights."""
    script = os.path.join(tmp, "worker.py")
    with open(script, "w") as f:
        f.write(WORKER)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs, outs = [], []
    for index in range(2):
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="",
                   PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        out = os.path.join(tmp, f"weights_{index}.npz")
        if os.path.exists(out):
            os.remove(out)
        outs.append(out)
        procs.append(subprocess.Popen(
            [sys.executable, script, workdir, out, str(kill_after)], env=env, cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    codes, logs = [], []
    for p in procs:
        try:
            log, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        codes.append(p.returncode)
        logs.append(log)
    weights = [[w for _, w in sorted(np.load(o).items(), key=lambda kv: int(kv[0][4:]))]
               if os.path.exists(o) else None for o in outs]
    return codes, weights, logs


@pytest.fixture(scope="module")
def straight_pair(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pair"))
    codes, weights, logs = run_pair(tmp, os.path.join(tmp, "run"))
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return tmp, weights


def test_two_workers_finish_with_identical_weights(straight_pair):
    tmp, (chief, other) = straight_pair
    assert len(chief) == len(other) > 0
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    # the chief wrote the stage; the other worker kept to its own folder
    stage = os.path.join(tmp, "run", "stages", "0_train")
    assert os.path.exists(os.path.join(stage, "summary.json"))
    assert [d for d in os.listdir(stage) if d.startswith(".worker_")]
    from mntk.train.fit import read_history
    history = read_history(os.path.join(stage, "history.csv"))
    assert len(history["loss"]) == EPOCHS
    assert history["loss"][-1] < history["loss"][0]      # it trained
    assert os.path.exists(os.path.join(tmp, "run", "summary.json"))


def test_killed_pair_resumes_from_backup(straight_pair, tmp_path):
    _, (reference, _) = straight_pair
    workdir = str(tmp_path / "run")
    # both workers die in the second epoch (after epoch 1 was backed up): 6 steps/epoch
    codes, weights, _ = run_pair(str(tmp_path), workdir, kill_after=8)
    assert codes == [3, 3]
    assert weights == [None, None]
    stage = os.path.join(workdir, "stages", "0_train")
    assert train.saved_epoch(os.path.join(stage, "backup")) == 1
    assert not os.path.exists(os.path.join(stage, "summary.json"))

    codes, (chief, other), logs = run_pair(str(tmp_path), workdir)
    assert codes == [0, 0], logs[0][-3000:]
    for a, b in zip(chief, other):
        np.testing.assert_array_equal(a, b)
    # resumed at epoch 2 with the same batches: the weights of an uninterrupted
    # pair, up to float rounding (the gRPC all-reduce does not fix the order in
    # which the two workers' gradients are summed; measured up to ~2e-3 after
    # Adam; a run that lost its backup differs by ~1e-1)
    for a, b in zip(chief, reference):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-2)
    with open(os.path.join(stage, "history.csv")) as f:
        rows = f.read().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(e) for e in range(EPOCHS)]
