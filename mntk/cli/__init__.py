"""The ``mntk`` command: ``mntk SUBCOMMAND [--flags]``.

Subcommands:
  train      run a recipe into a work directory
  evaluate   test accuracy of a saved model (.keras or .tflite) on a recipe's data
  export     saved .keras model -> .tflite (none | dynamic | int8)
  cost       MicroNet cost of a saved model or of a recipe's model
  calibrate  early-exit thresholds of a saved multi-exit model
  report     one-page report of a work directory

``mntk SUBCOMMAND --help`` lists that subcommand's flags. Errors print one
line (``mntk SUBCOMMAND: error: ...``) without a traceback and exit with
status 2 (bad command line) or 1 (the run failed); Ctrl-C exits with 130.
TensorFlow's start-up log lines are silenced unless ``--verbosity=0`` (or
higher) is given.

This module parses the command line and turns failures into those one-line
errors (``main``, ``split_overrides``); ``mntk.cli.commands`` holds each
subcommand's flags and handler, ``mntk.cli.inputs`` loads and checks the
files they are given, ``mntk.cli.summary`` writes a run's human summary.
"""
import logging
import os
import sys
import warnings

# Third-party chatter TensorFlow writes to stderr (C++ log lines at import and
# device start-up, absl and Python warnings) is silenced before TensorFlow is
# first imported, unless --verbosity asks for it.
VERBOSE = any(a.startswith("--verbosity") for a in sys.argv[1:])


def _quiet_tensorflow_start():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    if "tensorflow" in sys.modules:
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)   # C++ lines written before TensorFlow's log level applies
    try:
        import tensorflow as tf
        tf.config.list_physical_devices()   # device start-up logs here, still muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if not VERBOSE:
    _quiet_tensorflow_start()
    for _module in ("tensorflow", "tf_keras", "keras", "tensorflow_model_optimization",
                    "ai_edge_litert", "absl", "h5py", "numpy"):
        warnings.filterwarnings("ignore", module=_module)

# after the silencing above, on purpose
from mntk import compat  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from absl import flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from mntk.cli import commands  # noqa: E402
from mntk.cli.commands import ARGS, OVERRIDES, SUBCOMMANDS, subcommand  # noqa: E402,F401
from mntk.cli.inputs import UsageError, _one_line  # noqa: E402
from mntk.cli.summary import format_summary  # noqa: E402,F401

if not VERBOSE:
    absl_logging.set_verbosity(absl_logging.ERROR)

# the flag set of the current main() call (commands.FLAGS, renewed per call)
FLAGS = commands.FLAGS


def split_overrides(args):
    """(args without --config.a.b=v, [(a.b, v), ...]); ``--config.smoke=True``
    becomes the recipe's ``smoke`` argument (``--config=recipes/X.py:smoke``),
    so the recipe applies its smoke settings."""
    rest, overrides, smoke = [], [], None
    for arg in args:
        if arg.startswith("--config."):
            path, eq, text = arg[len("--config."):].partition("=")
            if not eq:
                raise UsageError(f"{arg}: give a value, --config.{path}=VALUE")
            if path == "smoke":
                smoke = text.strip().lower() in ("true", "1", "yes")
            else:
                overrides.append((path, text))
        else:
            rest.append(arg)
    if smoke:
        for i, arg in enumerate(rest):
            if arg.startswith("--config="):
                path, colon, recipe_arg = arg[len("--config="):].partition(":")
                if "smoke" not in recipe_arg.split(","):
                    recipe_arg = ",".join([a for a in recipe_arg.split(",") if a] + ["smoke"])
                rest[i] = f"--config={path}:{recipe_arg}"
    return rest, overrides


def _usage():
    return __doc__.split("Subcommands:")[0].strip() + "\n\nSubcommands:" + \
        __doc__.split("Subcommands:")[1].split("``mntk")[0].rstrip()


def main(argv=None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if len(argv) >= 2 else 2
    name = argv[1]
    if name not in SUBCOMMANDS:
        print(f"mntk: error: unknown subcommand {name!r}; use one of "
              f"{', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    fn, define = SUBCOMMANDS[name]
    global FLAGS
    if not flags.FLAGS.is_parsed():  # absl's own flags (logging) at their defaults
        flags.FLAGS(["mntk"], known_only=True)
    FLAGS = commands.new_flags()
    define()
    flags.DEFINE_integer("verbosity", -1, "0 or more: show TensorFlow's log lines "
                         "(silenced by default).", flag_values=FLAGS)
    own_flags = sorted(FLAGS)
    rest = argv[2:]
    if any(a in ("-h", "--help", "--helpshort") for a in rest):
        print(f"mntk {name}: {fn.__doc__ or ''}".strip())
        print("flags:\n" + "\n".join(f"  --{n}: {FLAGS[n].help}" for n in own_flags))
        return 0
    try:
        rest, OVERRIDES[:] = split_overrides(rest)
        ARGS[:] = [a for a in FLAGS([f"mntk {name}"] + rest)[1:]]
    except UsageError as e:
        return _error(name, e, 2)
    except Exception as e:  # flag and recipe-file errors: one line
        return _error(name, _recipe_file_error(e, _config_path(rest),
                                               raised=not isinstance(e, flags.Error)), 2)
    try:
        if "config" in FLAGS and FLAGS.config is not None:
            # A recipe that failed to load is a stand-in raising on first use:
            # use it here, so its failure is reported as a recipe-file error.
            FLAGS.config.keys()
    except Exception as e:
        return _error(name, _recipe_file_error(e, _config_path(rest), raised=True), 2)
    try:
        fn()
    except UsageError as e:
        return _error(name, e, 2)
    except KeyboardInterrupt:
        return _error(name, "interrupted; rerun the same command to resume from the last "
                            "finished epoch", 130)
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as e:
        return _error(name, e, 1)
    except Exception as e:  # TensorFlow's own errors: one line too
        return _error(name, f"{type(e).__name__}: {_one_line(e)}", 1)
    return 0


def _error(name: str, e, status: int) -> int:
    print(f"mntk {name}: error: {_one_line(e)}", file=sys.stderr)
    return status


def _config_path(args):
    """The recipe file named by ``--config=PATH[:ARG]`` in ``args``, or None."""
    for arg in args:
        if arg.startswith("--config="):
            return arg[len("--config="):].partition(":")[0]
    return None


def _recipe_file_error(e: BaseException, path=None, raised=False) -> str:
    """A flag error; a recipe file that is missing, or fails to load, is named
    with the last line of its traceback (ml_collections puts the whole
    traceback in the error). ``raised``: ``e`` is the recipe's own exception."""
    text = str(e)
    if raised and "Traceback (most recent call last)" not in text and os.path.isfile(path or ""):
        return (f"recipe file {path} failed to load (at import or in its get_config): "
                f"{type(e).__name__}: {_one_line(e)}; fix the recipe")
    if path is not None and not os.path.isfile(path):
        return (f"recipe file {path} not found; give the path of a recipe, "
                "e.g. --config=recipes/digits.py")
    if "Traceback (most recent call last)" in text:
        last = [l.strip() for l in text.strip().splitlines() if l.strip()][-1]
        if "get_config() takes" in last:
            return (f"the recipe's get_config takes no argument ({last}); drop ':ARG' "
                    "or --config.smoke (this recipe has no smoke settings)")
        where = path or "the recipe file"
        return (f"recipe file {where} failed to load (at import or in its get_config): "
                f"{last}; fix the recipe")
    return text


def run():
    """Console-script entry point (``mntk``). Exits without the interpreter's
    teardown: once a command has returned, every file it wrote is closed
    (TensorBoard's writers at the end of each fit), and tearing TensorFlow
    down took 1.7 s more (3 CPU-s) after a short run, measured."""
    status = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
