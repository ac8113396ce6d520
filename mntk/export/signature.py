"""What the TFLite converter reads: the model called in inference mode as a
``tf.function`` with named inputs and outputs, saved as a SavedModel whose
variables are frozen into constants.

The dict of outputs makes the TFLite signature carry the Keras output names
(``model.output_names``), so a multi-output model's outputs can be matched by
name: the converter sorts signature outputs and the raw output tensor order
does not follow the Keras order. Inputs are named after ``model.input_names``
with a free batch dimension.

Why freeze here: ``TFLiteConverter.from_concrete_functions`` saves the
function with every model variable to a SavedModel (tracing a save and a
restore function per variable, and the custom gradients of the quantizers'
straight-through estimators) and loads it back, only to freeze the variables
into constants itself. Freezing first and saving a variable-free SavedModel
without custom gradients gives the converter the same graph: the same ops,
weights, quantization parameters and outputs (checked on float, post-training
int8, ternary and learned QAT and sparse files in
tests/export_signature_test.py), in less time: a digits CNN's ternary QAT
file took 0.96 s of CPU against 1.22 s once warm, 4.7 s against 9.6 s as a
process's first conversion.
"""
import contextlib
import tempfile

import tensorflow as tf
# TF's own freezing (what the converter applies to a SavedModel's variables);
# not in TF's public API, hence this one import site.
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2)


def serving_function(model):
    """(concrete function ``inputs -> {output name: output}``, input names,
    output names) of ``model`` called with ``training=False``."""
    names = list(model.input_names)
    specs = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=n)
             for t, n in zip(model.inputs, names)]
    output_names = list(model.output_names)

    @tf.function
    def serve(*xs):
        outputs = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return {n: o for n, o in zip(output_names, outputs)}

    return serve.get_concrete_function(*specs), names, output_names


def frozen(function):
    """``function`` (from ``serving_function``) with its variables as
    constants, its input specs and named outputs kept."""
    constant = convert_variables_to_constants_v2(function)
    structure = function.structured_outputs
    specs = list(function.structured_input_signature[0])

    @tf.function(input_signature=specs)
    def serve(*xs):
        return tf.nest.pack_sequence_as(structure, constant(*xs))

    return serve.get_concrete_function()


@contextlib.contextmanager
def saved_model(function):
    """A temporary SavedModel directory whose one signature is ``function``
    frozen (``serving_default``); removed on exit."""
    with tempfile.TemporaryDirectory(prefix="mntk_tflite_") as directory:
        tf.saved_model.save(
            tf.Module(), directory, signatures=frozen(function),
            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        yield directory
