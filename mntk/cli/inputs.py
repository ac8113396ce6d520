"""What a subcommand is given, loaded and checked: files, models, input shapes.

A missing file, a file that is not a Keras or TFLite model, or a model whose
input size differs from the recipe's data is a ``UsageError``: one line
naming the file and the fix, exit status 2 (``mntk.cli.main``).
"""
import os


class UsageError(Exception):
    """A bad command line: printed as one line, exit status 2."""


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
    from mntk.serialization import UnsafeModelError, load_model
    try:
        return load_model(path)
    except (KeyboardInterrupt, MemoryError):
        raise
    except UnsafeModelError as e:   # a model, but one that would run its code
        raise UsageError(f"refused {path}: layer {e.layer!r} ({e.why}) holds code that "
                         "would run on load; give a model without Lambda layers, or, if "
                         "you trust its source, load it in Python with "
                         "mntk.load_model(path, safe_mode=False)") from None
    except Exception as e:  # any reader error: the file is not a model
        raise UsageError(f"cannot load {path} as a Keras model (.keras or .h5): "
                         f"{_one_line(e)[:200]}; give a model saved by mntk or Keras") from None


def _check_tflite(path, x):
    """A file LiteRT can load, whose input is the shape of ``x``'s examples."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        interpreter = Interpreter(model_path=path)
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"cannot load {path} as a TFLite model: {_one_line(e)[:200]}") from None
    shape = interpreter.get_input_details()[0]["shape"]
    _check_input_shape(path, [None] + list(shape[1:]), x.shape[1:])


def _existing(path):
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    return path


def _one_line(e) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())
