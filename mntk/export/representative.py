"""Calibration inputs for the int8 converter: any form of representative data
as the generator ``tf.lite.TFLiteConverter.representative_dataset`` wants.

``representative_data`` may be a numpy array (or tensor) of inputs, a list or
dict of arrays (one per input of a multi-input model), a ``tf.data.Dataset``
or any iterable yielding ``x`` or ``(x, y)``, batched or single samples. The
generator yields dicts keyed by the model's input names (so the calibrator
matches inputs by name, whatever order the converted graph lists them in),
adds the batch dimension to single samples and stops after ``max_samples``.
"""
import numpy as np
import tensorflow as tf


def _array_ndim(value):
    """ndim of an array-like, -1 for a list/tuple/dict (a structure, not an array)."""
    return -1 if isinstance(value, (list, tuple, dict)) else np.ndim(value)


def _representative_generator(data, model, max_samples):
    """A zero-argument generator of input lists for the converter's calibrator.

    Accepts a tf.data.Dataset or any iterable yielding x or (x, y) (batched or
    single samples), or a numpy array of inputs. Stops after ``max_samples``
    samples.
    """
    n_inputs = len(model.inputs)
    ranks = [len(t.shape) for t in model.inputs]

    def as_inputs(element):
        if isinstance(element, dict):
            return [np.asarray(element[n], np.float32) for n in model.input_names]
        if isinstance(element, (tuple, list)):
            # (x, y) or (x, y, w): the inputs are the first entry, unless the
            # model takes several inputs and this is the list of them.
            if n_inputs > 1 and len(element) == n_inputs and all(
                    _array_ndim(e) in (r, r - 1) for e, r in zip(element, ranks)):
                xs = list(element)
            else:
                return as_inputs(element[0])
        else:
            xs = [element]
        xs = [np.asarray(x, np.float32) for x in xs]
        # Add the batch dimension to single samples.
        return [x[None] if x.ndim == r - 1 else x for x, r in zip(xs, ranks)]

    arrays = None
    if isinstance(data, np.ndarray) or tf.is_tensor(data):
        arrays = [data]
    elif isinstance(data, dict):
        arrays = [data[n] for n in model.input_names]
    elif (isinstance(data, (list, tuple)) and n_inputs > 1 and len(data) == n_inputs
          and all(_array_ndim(a) == r for a, r in zip(data, ranks))):
        arrays = list(data)
    if arrays is not None:
        if len(arrays) != n_inputs:
            raise ValueError(
                f"representative_data is one array but model {model.name!r} takes "
                f"{n_inputs} inputs {model.input_names}; pass a list or dict of "
                "arrays, one per input.")
        arrays = [np.asarray(a, np.float32) for a in arrays]
        arrays = [a[None] if a.ndim == r - 1 else a for a, r in zip(arrays, ranks)]
        # Several inputs go one sample at a time, so that no batch of one input
        # is ever broadcast against a differently sized batch of another.
        step = 32 if n_inputs == 1 else 1
        source = ([a[i:i + step] for a in arrays]
                  for i in range(0, len(arrays[0]), step))
    elif isinstance(data, tf.data.Dataset):
        source = data.as_numpy_iterator()
    else:
        source = data

    def generator():
        seen = 0
        for element in source:
            xs = as_inputs(element)
            if seen + len(xs[0]) > max_samples:
                xs = [x[:max_samples - seen] for x in xs]
            if len(xs[0]) == 0:
                break
            seen += len(xs[0])
            # A dict keyed by signature input names: the calibrator maps it to the
            # right tensors whatever order the converted graph lists them in.
            yield dict(zip(model.input_names, xs))
            if seen >= max_samples:
                break
        if seen == 0:
            raise ValueError(
                "representative_data yielded no samples; pass a non-empty "
                "dataset, array or generator of model inputs.")

    return generator
