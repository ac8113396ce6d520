"""The subcommands: each one's flags and handler (``train``, ``evaluate``,
``export``, ``cost``, ``calibrate``, ``report``).

``@subcommand(define_flags)`` registers a handler in ``SUBCOMMANDS`` under its
name; ``mntk.cli.main`` calls ``new_flags()``, the handler's
``define_flags()``, parses the command line into ``FLAGS`` (positional
arguments left in ``ARGS``, ``--config.a.b=text`` overrides in ``OVERRIDES``)
and calls the handler. Handlers import what they need when they run, so
``mntk --help`` stays fast.
"""
import os

from absl import flags
from ml_collections import config_flags

from mntk.cli.inputs import (UsageError, _check_input_shape, _check_tflite, _existing,
                             _load_model)
from mntk.cli.summary import format_summary

FLAGS = flags.FlagValues()  # a fresh set per main() call (main is re-entrant)
SUBCOMMANDS = {}
ARGS = []  # positional arguments left after flag parsing
OVERRIDES = []  # (dotted path, text) of every --config.a.b=text, applied by _config()


def new_flags():
    """A fresh, empty ``FLAGS`` for one ``main()`` call (main is re-entrant)."""
    global FLAGS
    FLAGS = flags.FlagValues()
    return FLAGS


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


def _config():
    """--config resolved against the recipe schema, with the --config.* overrides."""
    from mntk.train.schema import resolve
    if FLAGS.config is None:
        raise UsageError("give --config=recipes/NAME.py")
    return resolve(FLAGS.config, OVERRIDES)
