"""Shared pytest set-up: quiet TensorFlow, tf_keras everywhere, seeded runs,
and the session's shared data and trained models.

Shared fixtures (built once per session, on first use):
  digits_split       ((x_train, y_train), (x_test, y_test)) of sklearn's digits
  trained_cnn        tests/_models.small_cnn trained on digits_split
  trained_multi_exit a two-exit residual model (OSI heads) trained on digits_split
The arrays are read-only, and a test that changes a shared model's weights is
reported at the end of the session: clone a model before training it.
"""
import atexit
import functools
import gc
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest


def _is_xdist_controller(config):
    """True in the process that only hands tests to pytest-xdist workers: it
    runs no test, so it need not spend seconds importing TensorFlow."""
    workers = getattr(config.option, "numprocesses", None)
    return bool(workers) and not os.environ.get("PYTEST_XDIST_WORKER")


def pytest_configure(config):
    if not _is_xdist_controller(config):
        _configure_tensorflow()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker has sent its results (and pytest-cov its data) before
        # Python exits; tearing down TensorFlow and a session's worth of
        # models then took 1-6 s, which the controller waits for. atexit runs
        # last in, first out: this skips the handlers registered before it
        # (TensorFlow's), and the rest of the interpreter's teardown.
        atexit.register(_exit_now)


def _exit_now():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def pytest_collection_finish(session):
    # Everything imported so far (TensorFlow, tfmot, mntk, the test modules)
    # lives until the end: leave it out of the cyclic collector's full
    # passes, which scanned it again at each one (GC took 10-15 CPU-s a worker
    # in the fast suite, 5-7 after; TFLite's converter asks for a full pass at
    # each conversion).
    gc.collect()
    gc.freeze()


def _configure_tensorflow():
    import tensorflow as tf
    # Two logical CPU devices, so MirroredStrategy tests get two replicas. This
    # has to happen before TensorFlow initializes its devices.
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # already initialized by an earlier import
        pass
    # Under pytest-xdist (bin/test runs a worker per core) each worker keeps
    # one intra-op thread, so the workers do not fight over the cores.
    if os.environ.get("PYTEST_XDIST_WORKER"):
        tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.distribute.MirroredStrategy = _mirrored_strategy(tf.distribute.MirroredStrategy)


# The longest xdist groups (a shared run and the tests reading it, or a test
# module), longest first, from the durations of a CI run (session 6: the
# all-stages group about 210 s, the applications subset about 150 s, the OSI
# and Texas smoke runs 105-115 s, ...). They are handed to the workers first
# (bin/test passes --no-loadscope-reorder, so xdist keeps this order instead
# of ordering groups by test count): longest-first keeps the two workers'
# finishing times close, where a long group handed out last ran alone.
LONGEST_GROUPS = (
    "all_stages", "tests/applications_test.py", "osi_cifar100", "texas_eic_imagenet",
    "tests/faults_test.py", "tests/multiworker_test.py", "qat8_prune",
    "tests/readme_test.py", "ternary_cifar100", "ttq_cifar10", "kaist_cifar100",
)


# session fixtures that train a model (below)
TRAINED_SESSION_MODELS = ("trained_multi_exit", "trained_cnn")


def _group(item):
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark.args else mark.kwargs.get("name")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    # Each test module runs on one xdist worker (unless its tests name a group
    # of their own), so a module-scoped fixture (a trained model, a pruned
    # export) is built once per run rather than once per worker.
    # Modules that read a trained session model go together, so it is
    # trained on one worker only (trained_multi_exit: ~9 s).
    shared = {}
    for item in items:
        for name in TRAINED_SESSION_MODELS:
            if name in getattr(item, "fixturenames", ()):
                shared.setdefault(item.nodeid.split("::")[0], name)
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(shared.get(module, module)))
    rank = {name: k for k, name in enumerate(LONGEST_GROUPS)}
    items[:] = sorted(items, key=lambda item: rank.get(_group(item), len(rank)))


@pytest.fixture(autouse=True)
def _seed_and_clear():
    from mntk.compat import keras
    # Session fixtures are built before this runs (higher scopes first), so
    # every test starts from the same seed whichever test built them. Models
    # built before a clear_session keep working: it only resets Keras's name
    # counters and the graph new functional models are built in.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield


# -- shared data and models -------------------------------------------------
DIGITS_TRAIN = 1200  # of sklearn's 1797 digits; the other 597 are the test split


@pytest.fixture(scope="session")
def digits_split():
    """((x_train, y_train), (x_test, y_test)): 8x8x1 float32 images in [0, 1]
    (pixel / 16) and int64 labels; the first 1200 digits train."""
    from sklearn.datasets import load_digits
    raw = load_digits()
    x = (raw.images / 16.0).astype("float32")[..., None]
    y = raw.target.astype("int64")
    x.setflags(write=False)
    y.setflags(write=False)
    return (x[:DIGITS_TRAIN], y[:DIGITS_TRAIN]), (x[DIGITS_TRAIN:], y[DIGITS_TRAIN:])


def _guard_unchanged(model):
    """Yield `model`, then fail the session if a test changed its weights."""
    before = [w.copy() for w in model.get_weights()]
    yield model
    changed = [v.name for v, w in zip(model.weights, before)
               if not np.array_equal(v.numpy(), w)]
    if changed:
        raise AssertionError(
            f"a test changed the shared model {model.name!r} ({changed[:3]}...); "
            "clone it (keras.models.clone_model + set_weights) before training it.")


@pytest.fixture(scope="session")
def trained_cnn(digits_split):
    """tests/_models.small_cnn trained 15 epochs on the digits train split."""
    from _models import compile_classifier, small_cnn
    from mntk.compat import keras
    keras.utils.set_random_seed(0)
    model = compile_classifier(small_cnn())
    model.fit(*digits_split[0], epochs=15, batch_size=64, verbose=0)
    yield from _guard_unchanged(model)


@pytest.fixture(scope="session")
def trained_multi_exit(digits_split):
    """tests/_models.residual_backbone with OSI exit heads at ``block1_out``
    and ``block2_inner`` (inside the residual block: the skip tensor crosses
    that exit), trained jointly on the digits train split."""
    from _models import residual_backbone
    from mntk.compat import keras
    from mntk.early_exit import add_exits, compile_exits, osi_head
    keras.utils.set_random_seed(0)
    multi = add_exits(residual_backbone(), at=["block1_out", "block2_inner"],
                      head=functools.partial(osi_head, bn_momentum=0.9))
    compile_exits(multi, keras.optimizers.Adam(0.01))
    (x, y), _ = digits_split
    multi.fit(x, [y] * 3, epochs=8, batch_size=64, verbose=0)
    yield from _guard_unchanged(multi)


def _mirrored_strategy(base):
    """MirroredStrategy over the two logical CPUs, reducing through one device
    instead of collective ops: each new strategy restarts the collective
    instance keys, and a key reused by a later strategy in this process aborts
    its all-reduce ("Shape mismatch in the collective instance"). The replicas
    still train on their own halves of the batch and sum their gradients."""
    import tensorflow as tf

    class _MirroredStrategy(base):
        def __init__(self, devices=None, cross_device_ops=None):
            super().__init__(devices=devices, cross_device_ops=(
                cross_device_ops or tf.distribute.ReductionToOneDevice()))

    return _MirroredStrategy
