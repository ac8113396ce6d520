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
"""
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
from ml_collections import config_flags  # noqa: E402

if not VERBOSE:
    absl_logging.set_verbosity(absl_logging.ERROR)

FLAGS = flags.FlagValues()  # a fresh set per main() call (main is re-entrant)
SUBCOMMANDS = {}
ARGS = []  # positional arguments left after flag parsing
OVERRIDES = []  # (dotted path, text) of every --config.a.b=text, applied by _config()


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


def subcommand(define_flags):
    """Register ``fn`` as a subcommand whose flags ``define_flags`` defines."""
    def wrap(fn):
        SUBCOMMANDS[fn.__name__.rstrip("_")] = (fn, define_flags)
        return fn
    return wrap


def _config_flag(required=True):
    config_flags.DEFINE_config_file("config", None, "Recipe file (recipes/NAME.py); "
                                    "override fields with --config.a.b=value.", flag_values=FLAGS,
                                    # overrides are ours (split_overrides), not read from sys.argv
                                    sys_argv=["mntk"])
    if required:
        flags.mark_flag_as_required("config", flag_values=FLAGS)


def _flags_train():
    _config_flag()
    flags.DEFINE_string("workdir", None, "Output directory (created; reused to resume).",
                        flag_values=FLAGS)
    flags.DEFINE_list("stages", None, "Run only these stages (default: the recipe's).",
                      flag_values=FLAGS)
    flags.DEFINE_bool("force", False, "Go on in a work directory run with another config "
                      "(its finished stages are kept).", flag_values=FLAGS)
    flags.DEFINE_string("restart_from", None, "Redo this stage and the ones after it "
                        "(their folders are removed first).", flag_values=FLAGS)
    flags.mark_flag_as_required("workdir", flag_values=FLAGS)


@subcommand(_flags_train)
def train():
    """Run a recipe's stages into --workdir (resumes if it exists)."""
    from mntk.train.loop import run
    summary = run(_config(), FLAGS.workdir, stages=FLAGS.stages, force=FLAGS.force,
                  restart_from=FLAGS.restart_from)
    print(format_summary(summary))
    print(f"summary: {os.path.join(FLAGS.workdir, 'summary.json')}")


def _flags_evaluate():
    _config_flag()
    flags.DEFINE_string("model", None, "A .keras or .tflite file.", flag_values=FLAGS)
    flags.DEFINE_bool("all_exits", False, "Also report the accuracy of every exit "
                      "of a multi-exit model (shallow to deep, final last).", flag_values=FLAGS)
    flags.mark_flag_as_required("model", flag_values=FLAGS)


@subcommand(_flags_evaluate)
def evaluate():
    """Test accuracy of --model (.keras or .tflite) on --config's data."""
    import numpy as np
    from mntk.train.context import load_data
    model_path = _existing(FLAGS.model)
    data = load_data(_config())
    if model_path.endswith(".tflite"):
        from mntk.early_exit.outputs import predict_tflite
        _check_tflite(model_path, data.x_test)
        names, outputs = predict_tflite(model_path, data.x_test)  # final last, by structure
    else:
        model = _load_model(model_path)
        _check_input_shape(model_path, model.input_shape, data.input_shape)
        outputs = model.predict(data.x_test, verbose=0)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        names = list(model.output_names)
    if FLAGS.all_exits and len(outputs) > 1:
        for name, logits in zip(names, outputs):
            print(f"accuracy[{name}]: {float(np.mean(np.argmax(logits, -1) == data.y_test)):.4f}")
    logits = outputs[-1]
    print(f"accuracy: {float(np.mean(np.argmax(logits, -1) == data.y_test)):.4f}")


def _flags_export():
    _config_flag(required=False)
    flags.DEFINE_string("model", None, "A saved .keras model.", flag_values=FLAGS)
    flags.DEFINE_string("out", None, "Output .tflite path.", flag_values=FLAGS)
    flags.DEFINE_enum("quantize", "none", ["none", "dynamic", "int8"], "Quantization.",
                      flag_values=FLAGS)
    flags.mark_flags_as_required(["model", "out"], flag_values=FLAGS)


@subcommand(_flags_export)
def export_():
    """Convert --model (.keras) to --out (.tflite)."""
    from mntk import export
    model = _load_model(_existing(FLAGS.model))
    rep = None
    if FLAGS.quantize == "int8" and FLAGS.config is not None:
        from mntk.train.context import load_data
        data = load_data(_config())
        _check_input_shape(FLAGS.model, model.input_shape, data.input_shape)
        rep = data.x_train[:200]
    result = export.to_tflite(model, FLAGS.out, quantize=FLAGS.quantize,
                              representative_data=rep)
    print(f"wrote {result.path} ({result.bytes} bytes)")


def _flags_cost():
    _config_flag(required=False)
    flags.DEFINE_string("model", None, "A saved .keras model (or give --config).",
                        flag_values=FLAGS)
    flags.DEFINE_enum("task", None, ["cifar100", "imagenet"], "Score against this task.",
                      flag_values=FLAGS)
    flags.DEFINE_bool("freebie", False, "Count an unquantized model at 16 bits.", flag_values=FLAGS)
    flags.DEFINE_bool("json", False, "Print JSON instead of a table.", flag_values=FLAGS)


@subcommand(_flags_cost)
def cost():
    """MicroNet cost of --model or of --config's model."""
    import json
    from mntk import cost as cost_lib
    if FLAGS.model:
        model = _load_model(_existing(FLAGS.model))
    elif FLAGS.config is not None:
        from mntk import models
        from mntk.train.context import load_data
        c = _config()
        data = load_data(c)
        model = models.get(c.model.name, input_shape=data.input_shape,
                           num_classes=data.num_classes, **dict(c.model.kwargs))
    else:
        raise UsageError("give --model=PATH.keras or --config=recipes/NAME.py")
    report = cost_lib.estimate(model, task=FLAGS.task, freebie=FLAGS.freebie)
    print(json.dumps(report.to_json(), indent=2) if FLAGS.json else report.table())


def _flags_calibrate():
    _config_flag()
    flags.DEFINE_string("model", None, "A saved multi-exit .keras model.", flag_values=FLAGS)
    flags.DEFINE_enum("criterion", "max_softmax", ["max_softmax", "entropy"], "Confidence.",
                      flag_values=FLAGS)
    flags.DEFINE_float("exit_rate", None, "Target fraction leaving before the final output.",
                       flag_values=FLAGS)
    flags.DEFINE_float("max_accuracy_drop", None, "Largest accuracy drop allowed.",
                       flag_values=FLAGS)
    flags.DEFINE_float("mean_ops", None, "Budget of mean ops per example.", flag_values=FLAGS)
    flags.DEFINE_string("out", None, "Write the calibration JSON here.", flag_values=FLAGS)
    flags.mark_flag_as_required("model", flag_values=FLAGS)


@subcommand(_flags_calibrate)
def calibrate():
    """Early-exit thresholds of --model on --config's validation data."""
    from mntk import early_exit
    from mntk.train.context import load_data
    multi = _load_model(_existing(FLAGS.model))
    data = load_data(_config())
    _check_input_shape(FLAGS.model, multi.input_shape, data.input_shape)
    targets = {k: getattr(FLAGS, k) for k in ("exit_rate", "max_accuracy_drop", "mean_ops")
               if getattr(FLAGS, k) is not None}
    if len(targets) != 1:
        raise UsageError("give exactly one of --exit_rate, --max_accuracy_drop, --mean_ops")
    result = early_exit.calibrate(multi, (data.x_val, data.y_val),
                                  criterion=FLAGS.criterion, **targets)
    print(result.to_json(FLAGS.out))


def _flags_report():
    flags.DEFINE_bool("html", False, "Also write a self-contained report.html.", flag_values=FLAGS)


@subcommand(_flags_report)
def report():
    """One-page report (Markdown, optionally HTML) of a work directory."""
    from mntk import report as report_lib
    if len(ARGS) != 1:
        raise UsageError("usage: mntk report WORKDIR [--html]")
    paths = report_lib.write_report(ARGS[0], html=FLAGS.html)
    for p in paths:
        print(p)


def _pct(value) -> str:
    return "   n/a" if value is None else f"{100 * value:6.2f}%"


def _score(cost) -> str:
    return f"{cost.score:.6f}" if cost is not None and cost.score is not None else "n/a"


def format_summary(summary) -> str:
    """A short human summary of a run's ``RunSummary`` (or its dict)."""
    from mntk.train.summary import RunSummary
    if isinstance(summary, dict):
        summary = RunSummary.from_dict(summary)
    lines = [f"{summary.recipe or 'run'}: finished in {summary.seconds:.0f} s"]
    if summary.accuracy is not None:
        lines.append(f"  Keras test accuracy      {_pct(summary.accuracy)}")
    for kind, r in (summary.tflite or {}).items():
        lines.append(f"  TFLite {kind:<17} {_pct(r.accuracy_tflite)}  agreement "
                     f"{_pct(r.agreement)}  max|diff| {r.max_abs_diff or 0:.2g}  "
                     f"{r.bytes:,} bytes")
    c = summary.cost
    if c is not None:
        lines.append(f"  MicroNet cost            params {c.params:,.0f}  ops {c.ops:,.0f}"
                     + (f"  score {c.score:.6f} ({c.task})" if c.score is not None else "")
                     + (f"\n    ({c.note})" if c.note else ""))
    tricks = summary.tricks or {}
    parts = []
    if "srip" in tricks:
        parts.append(f"SRIP {tricks['srip']['coefficient']} on {tricks['srip']['layers']} convs")
    if "adaptive_smoothing" in tricks:
        parts.append(f"adaptive label smoothing eps {tricks['adaptive_smoothing']['epsilon']}")
    if parts:
        lines.append("  tricks                   " + "; ".join(parts))
    e = summary.early_exit
    if e is not None:
        staged = e.staged_tflite.agreement if e.staged_tflite is not None else None
        lines.append(f"  early exit at {','.join(e.at)}  exit rate {_pct(e.exit_rate)}  accuracy "
                     f"{_pct(e.accuracy)} (final {_pct(e.final_accuracy)})  mean ops saved "
                     f"{_pct(e.ops_saved)}  staged TFLite agreement {_pct(staged)}")
    p = summary.pruning
    if p is not None:
        lines.append(f"  pruned to {p.target:.0%}            accuracy {_pct(p.accuracy)}  score "
                     + _score(p.cost))
    q = summary.quantization
    if q is not None:
        lines.append(f"  {q.scheme} QAT              accuracy {_pct(q.accuracy)}  mean weight bits "
                     f"{q.mean_weight_bits:.2f}  TFLite int8 agreement {_pct(q.tflite.agreement)}  "
                     f"{q.tflite.bytes:,} bytes (packed {q.size.get('packed_bytes', 0):,.0f})"
                     + (f"  score {_score(q.cost)}" if q.cost is not None else ""))
    return "\n".join(lines)


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def _check_input_shape(path, model_shape, data_shape):
    """Refuse data of another image size: LiteRT would resize it silently."""
    expected = tuple(int(d) if d is not None else None for d in list(model_shape)[1:])
    got = tuple(int(d) for d in data_shape)
    if len(expected) != len(got) or any(e is not None and e != g
                                        for e, g in zip(expected, got)):
        raise UsageError(f"{path} expects {_shape_text(expected)} inputs, but --config's data "
                         f"is {_shape_text(got)}; set --config.data.image_size (and "
                         "--config.data.channels) to the model's input")


def _load_model(path):
    """``mntk.load_model`` with a one-line error for a file that is not a model."""
    from mntk.serialization import load_model
    try:
        return load_model(path)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # any reader error: the file is not a model
        raise UsageError(f"cannot load {path} as a Keras model (.keras or .h5): "
                         f"{_one_line(e)[:200]}; give a model saved by mntk or Keras") from None


def _run_tflite(path, x, batch_size=256):
    """Final output of a float-io TFLite file on ``x`` (found by the graph's
    structure, not by output name; see mntk.early_exit.outputs)."""
    from mntk.early_exit.outputs import predict_tflite
    _check_tflite(path, x)
    return predict_tflite(path, x, batch_size)[1][-1]


def _check_tflite(path, x):
    """A file LiteRT can load, whose input is the shape of ``x``'s examples."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=path)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"cannot load {path} as a TFLite model: {_one_line(e)[:200]}") from None
    shape = interpreter.get_input_details()[0]["shape"]
    _check_input_shape(path, [None] + list(shape[1:]), x.shape[1:])


def _config():
    """--config resolved against the recipe schema, with the --config.* overrides."""
    from mntk.train.schema import resolve
    if FLAGS.config is None:
        raise UsageError("give --config=recipes/NAME.py")
    return resolve(FLAGS.config, OVERRIDES)


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


def _existing(path):
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    return path


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
    FLAGS = flags.FlagValues()
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
        return _error(name, _recipe_file_error(e), 2)
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


def _recipe_file_error(e: BaseException) -> str:
    """A flag error; a recipe file that fails to load is named with the last
    line of its traceback (ml_collections puts the whole traceback in it)."""
    text = str(e)
    if "Traceback (most recent call last)" in text:
        last = [l.strip() for l in text.strip().splitlines() if l.strip()][-1]
        if "get_config() takes" in last:
            return (f"the recipe's get_config takes no argument ({last}); drop ':ARG' "
                    "or --config.smoke (this recipe has no smoke settings)")
        return f"cannot load the recipe file: {last}"
    return text


def _one_line(e) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


def run():
    """Console-script entry point (``mntk``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
