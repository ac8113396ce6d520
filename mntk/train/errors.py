"""The runner's errors (a leaf module: everything in ``mntk.train`` may raise them)."""


class RecipeError(ValueError):
    """A recipe config asks for something the runner cannot do."""


class ConfigError(RecipeError):
    """A recipe field that is unknown, of the wrong type or out of range.

    The message is one line naming the field, the value and the fix.
    """


class DivergedError(RecipeError):
    """Training diverged: a NaN/Inf loss, metric, weight or model output."""
