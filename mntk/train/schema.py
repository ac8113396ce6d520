"""The recipe schema: every field the runner reads, its type, default and check.

``FIELDS`` below is the one table of recipe fields; it is the only place a
default lives. ``resolve(config, overrides)`` turns a recipe's
``ml_collections.ConfigDict`` (``recipes/*.py``) plus ``--config.a.b=value``
overrides into a complete, validated, locked ``ConfigDict``:

- every field of the table is present (the recipe's value, else the default);
- a field or section the table does not know is an error naming it and the
  nearest known one (``train.epochz`` -> "did you mean train.epochs?");
- values are checked for type and range at load (learning rates > 0,
  coefficients >= 0 and finite, batch sizes >= 1, fractions in [0, 1], ...);
  a bad value is a one-line ``ConfigError`` naming the field, the value and
  the fix.

Adding a field is one line in ``FIELDS``::

    F("prune.global_threshold", bool, False, doc="one magnitude threshold for all layers"),

with ``F(path, type, default, *checks, doc=..., required_by=STAGE)``:
``type`` is ``bool``, ``int``, ``float``, ``str``, ``tuple`` or ``dict``
(``dict``: free-form, e.g. ``model.kwargs``); ``default=None`` means "unset"
(the field may then hold None); ``checks`` are callables from the ``CHECKS``
section (``positive``, ``non_negative``, ``fraction``, ``at_least(n)``,
``one_of(...)``, ...); ``required_by="quantize"`` makes a None value an error
when that stage is in ``config.stages``; ``output_only=True`` marks a field a
rerun of a finished work directory may change (``config.json`` check). Adding a stage section with its own
optimizer settings is one line too: ``*stage_optimizer("qat8")`` gives it
``qat8.epochs``, ``qat8.learning_rate``, ... defaulting to ``train``'s
(``section_train_config``).

``smoke`` is set by a recipe's ``smoke`` argument
(``--config=recipes/X.py:smoke``); on the command line ``--config.smoke=True``
reloads the recipe with that argument (``mntk.cli``), so it applies the smoke
settings instead of only flipping the flag.
"""
import ast
import dataclasses
import difflib
import math
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Tuple

import ml_collections

from mntk.train.errors import ConfigError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "cosine_restarts", "cosine_cycles", "step")
SCHEMES = ("ternary", "learned", "binary", "int8")
EXPORT_KINDS = ("float", "dynamic", "int8")


# --------------------------------------------------------------------- checks
# Each check returns None when the value is fine, else "what it must be; the fix".

def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive(v):
    return None if _number(v) and math.isfinite(v) and v > 0 else "must be a finite number > 0"


def non_negative(v):
    return None if _number(v) and math.isfinite(v) and v >= 0 else \
        "must be a finite number >= 0"


def fraction(v):
    return None if _number(v) and 0 <= v <= 1 else "must be a fraction in [0, 1]"


def below_one(v):
    return None if _number(v) and 0 <= v < 1 else "must be in [0, 1)"


def at_least(n: int) -> Callable:
    def check(v):
        return None if _number(v) and v >= n else f"must be >= {n}"
    return check


def one_of(*choices) -> Callable:
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"
    return check


def each(check: Callable) -> Callable:
    def check_all(v):
        for item in v:
            problem = check(item)
            if problem:
                return f"item {item!r} {problem}"
        return None
    return check_all


def sums_to_one(v):
    return None if len(v) == 3 and abs(sum(v) - 1.0) < 1e-6 and all(0 < x < 1 for x in v) \
        else "must be three fractions (train, validation, test) in (0, 1) summing to 1"


def skip_layers(v):
    return None if v in ("default", "none") or isinstance(v, (tuple, list)) else \
        "must be 'default', 'none' or a tuple of layer names"


# ---------------------------------------------------------------------- table

@dataclasses.dataclass(frozen=True)
class Field:
    """One recipe field: dotted path, type, default, checks, documentation."""
    path: str
    type: type
    default: Any
    checks: Tuple[Callable, ...] = ()
    doc: str = ""
    required_by: Optional[str] = None   # a stage name, or "always"
    output_only: bool = False           # changes what is printed, not what is trained


def F(path, type_, default, *checks, doc="", required_by=None,
      output_only=False) -> Field:
    return Field(path, type_, default, tuple(checks), doc, required_by, output_only)


# The optimizer settings a stage section may override; None: ``train``'s value.
INHERITED = (
    ("epochs", int, (at_least(0),)), ("optimizer", str, (one_of(*OPTIMIZERS),)),
    ("learning_rate", float, (positive,)), ("schedule", str, (one_of(*SCHEDULES),)),
    ("restart_cycles", int, (at_least(1),)), ("momentum", float, (below_one,)),
    ("nesterov", bool, ()), ("weight_decay", float, (non_negative,)),
    ("min_learning_rate", float, (non_negative,)), ("step_epochs", tuple, ()),
    ("step_learning_rates", tuple, ()), ("l2", float, (non_negative,)),
    ("l2_on", str, (one_of("all", "no_biases", "kernels"),)),
)


def stage_optimizer(section: str) -> Tuple[Field, ...]:
    """``section.epochs``, ``section.learning_rate``, ...: None uses ``train``'s."""
    return tuple(F(f"{section}.{name}", type_, None, *checks,
                   doc=f"{section} stage's {name} (None: train.{name})")
                 for name, type_, checks in INHERITED)


FIELDS: Tuple[Field, ...] = (
    # run
    F("name", str, "", doc="recipe name, copied into summary.json"),
    F("seed", int, 0, at_least(0), doc="seeds weights, data order and dropout"),
    F("smoke", bool, False, doc="the recipe's smoke settings were applied (see module doc)"),
    F("strategy", str, "default", one_of(*STRATEGIES), doc="tf.distribute strategy"),
    F("tpu", str, "", doc="TPU name or grpc address (strategy='tpu')"),
    F("verbose", int, 2, one_of(0, 1, 2), doc="Keras fit verbosity", output_only=True),
    F("deterministic", bool, False, doc="tf.config.experimental.enable_op_determinism"),
    F("stages", tuple, ("train",), doc="stage names, run in order"),
    F("published_error", tuple, None, doc="the entry's published figures, for the report"),
    # data: None fields are not passed to mntk.data.load (the loader's own default)
    F("data.name", str, None, required_by="always", doc="mntk.data.load name"),
    F("data.batch_size", int, 32, at_least(1), doc="per replica (see train.scale_with_replicas)"),
    F("data.image_size", int, None, at_least(1), doc="resize images to this side"),
    F("data.channels", int, None, one_of(1, 3), doc="digits only: 1 or 3 channels"),
    F("data.fractions", tuple, None, sums_to_one, doc="digits only: train/val/test split"),
    F("data.data_dir", str, None, doc="TFDS data directory (prepared with `tfds build`)"),
    F("data.split_names", dict, None, doc="TFDS only: {train, validation, test} split specs"),
    F("data.cache", bool, None, doc="TFDS only: cache decoded images"),
    F("data.shuffle_buffer", int, None, at_least(1), doc="TFDS only: shuffle buffer size"),
    F("data.autoaugment", str, None, doc="TFDS only: an AutoAugment-style policy or set "
      "(mntk.data.autoaugment): 'kaist' = four policy copies an epoch, 'osi_cifar100'"),
    F("data.pad_fill", float, None, doc="TFDS CIFAR only: crop padding value 0..255 (KAIST 128)"),
    F("data.augment", bool, None, doc="training augmentation (None: the data set's default)"),
    F("data.deterministic", bool, False, doc="deterministic tf.data order"),
    F("data.one_hot", bool, False, doc="one-hot labels (implied by data.mix)"),
    F("data.mix", str, None, one_of(None, "mixup", "cutmix"), doc="batch mixing"),
    F("data.mix_alpha", float, 1.0, positive, doc="Beta(alpha, alpha) of the mix ratio"),
    F("data.mix_probability", float, 1.0, fraction, doc="share of batches mixed"),
    F("data.steps_per_epoch", int, None, at_least(1), doc="streamed data: steps per epoch"),
    F("data.seed", int, None, at_least(0), doc="data seed (None: the run's seed)"),
    # model
    F("model.name", str, None, required_by="train", doc="mntk.models.get name"),
    F("model.classifier", str, "logits", doc="name of the final Dense layer"),
    F("model.kwargs", dict, {}, doc="keyword arguments of the model builder"),
    # train
    F("train.epochs", int, 1, at_least(0)),
    F("train.optimizer", str, "adam", one_of(*OPTIMIZERS)),
    F("train.learning_rate", float, 1e-3, positive, doc="per replica when scaled"),
    F("train.schedule", str, "constant", one_of(*SCHEDULES)),
    F("train.restart_cycles", int, 4, at_least(1), doc="cosine_restarts: doubling cycles"),
    F("train.momentum", float, 0.9, below_one, doc="SGD momentum"),
    F("train.nesterov", bool, True, doc="SGD Nesterov momentum"),
    F("train.weight_decay", float, 0.0, non_negative, doc="decoupled weight decay"),
    F("train.scale_with_replicas", bool, True, doc="batch and learning rate x replicas"),
    F("train.max_steps_per_epoch", int, 0, at_least(0), doc="cap on steps (0: whole epoch)"),
    F("train.label_smoothing", float, 0.0, below_one, doc="needs one-hot labels"),
    F("train.min_learning_rate", float, 0.0, non_negative,
      doc="floor of cosine / cosine_cycles (torch's eta_min), per replica when scaled"),
    F("train.step_epochs", tuple, (), doc="schedule 'step': epochs where the rate changes"),
    F("train.step_learning_rates", tuple, (), doc="schedule 'step': the rate from each of them"),
    F("train.l2", float, 0.0, non_negative,
      doc="coupled L2 weight decay (mntk.regularizers.apply_l2; torch SGD's weight_decay)"),
    F("train.l2_on", str, "all", one_of("all", "no_biases", "kernels"),
      doc="variables the coupled L2 covers"),
    F("init_from", str, "", doc="start from this .keras/.h5 model instead of model.name "
      "(the qat8 stage's trained float model)"),
    # tricks
    F("tricks.srip.enabled", bool, False, doc="SRIP (Bansal et al. 2018)"),
    F("tricks.srip.coefficient", float, 1e-2, non_negative),
    F("tricks.srip.layers", str, "pointwise", one_of("pointwise", "conv", "all")),
    F("tricks.srip.power_iterations", int, 2, at_least(1)),
    F("tricks.srip.squared", bool, False),
    F("tricks.srip.reduction", str, "sum", one_of("sum", "mean"), doc="over layers"),
    F("tricks.srip.gram", str, "smaller", one_of("smaller", "fan_in", "fan_out"),
      doc="which Gram matrix (KAIST: fan_in)"),
    F("tricks.srip.vector", str, "persistent", one_of("persistent", "fresh"),
      doc="power-iteration start (KAIST: a fresh N(0, 1) vector each step)"),
    F("tricks.srip.schedule", str, "", doc="mntk.callbacks.CoefficientSchedule preset"),
    F("tricks.adaptive_smoothing.enabled", bool, False, doc="KAIST's adaptive smoothing"),
    F("tricks.adaptive_smoothing.epsilon", float, 0.3, below_one),
    F("tricks.adaptive_smoothing.refresh", str, "epoch", one_of("epoch", "step")),
    # cost
    F("cost.task", str, None, one_of(None, "cifar100", "imagenet"), doc="scoring task"),
    F("cost.freebie", bool, False, doc="count an unquantized model at 16 bits"),
    F("cost.note", str, "", doc="shown next to the score"),
    # early_exit
    F("early_exit.at", tuple, None, required_by="early_exit", doc="layers to add exits at"),
    F("early_exit.head", str, "osi", doc="mntk.early_exit head preset"),
    F("early_exit.head_bn_momentum", float, None, below_one, doc="OSI head BN momentum"),
    F("early_exit.loss", str, "cross_entropy", one_of("cross_entropy", "confidence_weighted")),
    F("early_exit.freeze_backbone", bool, True),
    F("early_exit.criterion", str, "max_softmax", one_of("max_softmax", "entropy")),
    F("early_exit.max_examples", int, 0, at_least(0), doc="0: whole val/test split"),
    F("early_exit.threshold", float, None, fraction,
      doc="a fixed exit threshold (OSI: 0.85 max softmax) instead of early_exit.target"),
    F("early_exit.backbone_bn_updates", bool, False,
      doc="frozen backbone's BatchNorm keeps updating its statistics (OSI)"),
    F("early_exit.target.exit_rate", float, None, fraction),
    F("early_exit.target.max_accuracy_drop", float, None, fraction),
    F("early_exit.target.mean_ops", float, None, positive),
    *stage_optimizer("early_exit"),
    # prune
    F("prune.target", float, 0.5, below_one, doc="final sparsity"),
    F("prune.sparsity_schedule", str, "polynomial", one_of("polynomial", "constant")),
    F("prune.smoothing_epsilon", float, 0.0, below_one, doc="adaptive smoothing while pruning"),
    F("prune.method", str, "tfmot", one_of("tfmot", "global"),
      doc="tfmot: per layer; global: one threshold (mntk.global_pruning)"),
    F("prune.rates", tuple, (), each(below_one),
      doc="global: one rate per stage of equal length (prune.epochs / len)"),
    F("prune.normalize", str, "none", one_of("none", "l2"), doc="global: OSI's l2"),
    F("prune.rewind", str, "none", one_of("none", "best", "stage_start"),
      doc="global: weights reloaded after each stage's masks (KAIST: best)"),
    *stage_optimizer("prune"),
    # quantize (learned-scheme bit fields: None is the scheme's own default)
    F("quantize.scheme", str, None, one_of(None, *SCHEMES), required_by="quantize"),
    F("quantize.threshold", float, 0.05, positive, doc="ternary threshold x max|w|"),
    F("quantize.skip", object, "default", skip_layers, doc="layers left float"),
    F("quantize.init_bits", int, None, at_least(1)),
    F("quantize.min_bits", int, None, at_least(1)),
    F("quantize.max_bits", int, None, at_least(1)),
    F("quantize.learn_activations", bool, None),
    F("quantize.activation_init_bits", int, None, at_least(1)),
    F("quantize.activation_min_bits", int, None, at_least(1)),
    F("quantize.activation_max_bits", int, None, at_least(1)),
    F("quantize.cost_target.enabled", bool, False, doc="mntk.losses.CostTarget"),
    F("quantize.cost_target.target", float, None, positive, doc="mean weight bits"),
    F("quantize.cost_target.coefficient", float, 0.1, non_negative),
    F("quantize.cost_target.include_activations", bool, False),
    F("quantize.distillation.enabled", bool, False, doc="from the float model"),
    F("quantize.distillation.temperature", float, 4.0, positive),
    F("quantize.distillation.alpha", float, 0.5, fraction),
    *stage_optimizer("quantize"),
    # qat8: 8-bit QAT of a trained float model (init_from or the previous stage's)
    *stage_optimizer("qat8"),
    # finetune
    *stage_optimizer("finetune"),
    # export
    F("export.kinds", tuple, ("float", "int8"), each(one_of(*EXPORT_KINDS))),
    F("export.representative_examples", int, 200, at_least(1), doc="int8 calibration"),
    F("export.verify_examples", int, 0, at_least(0), doc="0: the whole test split"),
)

BY_PATH: Dict[str, Field] = {f.path: f for f in FIELDS}
assert len(BY_PATH) == len(FIELDS), "a recipe field is declared twice"
#: Fields a rerun of a work directory may change (``mntk.train.workdir``).
OUTPUT_ONLY = frozenset(f.path for f in FIELDS if f.output_only)
SECTIONS = frozenset(p.rsplit(".", i)[0] for p in BY_PATH for i in range(1, p.count(".") + 1))


# ------------------------------------------------------------------ resolving

def _nearest(path: str) -> str:
    """ ' (did you mean X?)' for the known path or section nearest to ``path``."""
    known = list(BY_PATH) + sorted(SECTIONS)
    section = path.rsplit(".", 1)[0] if "." in path else ""
    same = [k for k in known if k.rsplit(".", 1)[0] == section] if section else []
    match = difflib.get_close_matches(path, same, n=1, cutoff=0.6) or \
        difflib.get_close_matches(path, known, n=1, cutoff=0.5)
    return f" (did you mean {match[0]}?)" if match else ""


def unknown_field(path: str, where: str = "recipe") -> ConfigError:
    return ConfigError(f"unknown {where} field {path}{_nearest(path)}; the known fields "
                       "are listed in mntk/train/schema.py")


def _free_dict_of(path: str) -> Optional[str]:
    """The free-form dict field (``model.kwargs``) that ``path`` lies inside."""
    for known, field in BY_PATH.items():
        if field.type is dict and path.startswith(known + "."):
            return known
    return None


def _flatten(node, prefix: str, out: Dict[str, Any]) -> None:
    for key, value in node.items():
        path = f"{prefix}{key}"
        field = BY_PATH.get(path)
        if field is not None:
            out[path] = value
        elif path in SECTIONS and isinstance(value, dict):
            _flatten(value, path + ".", out)
        elif path in SECTIONS and value is None:
            continue  # a recipe may blank out a section it does not use
        else:
            raise unknown_field(path)


def _plain(value):
    """ConfigDicts (and nested ones) as plain dicts; lists as tuples."""
    if isinstance(value, ml_collections.ConfigDict):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def parse_value(path: str, text: str):
    """A command-line override's text as the field's type."""
    field = BY_PATH.get(path)
    type_ = field.type if field is not None else None
    if field is not None and field.default is None and text in ("None", "none"):
        return None
    if type_ is str:
        return text
    if type_ is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{path}={text}: expected True or False")
    if type_ is float:
        try:
            return float(text)   # also nan and inf, which the checks then name
        except ValueError:
            raise ConfigError(f"--config.{path}={text}: expected a number") from None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if type_ is int:
            raise ConfigError(f"--config.{path}={text}: expected an integer") from None
        if type_ is tuple:  # train,export -> ('train', 'export')
            return tuple(p.strip() for p in text.split(",") if p.strip())
        return text
    if type_ is tuple and isinstance(value, str):
        return (value,)
    return value


def _coerce(field: Field, value):
    """``value`` as ``field.type``, or a ConfigError naming what was expected."""
    if value is None:
        if field.default is None:
            return None
        raise _bad(field, value, f"must not be None (default {field.default!r})")
    t = field.type
    if t is object:
        return tuple(value) if isinstance(value, list) else value
    if t is float and _number(value):
        return float(value)
    if t is int and _number(value) and float(value).is_integer():
        return int(value)
    if t is tuple and isinstance(value, (tuple, list)):
        return tuple(value)
    if t is dict and isinstance(value, dict):
        return dict(value)
    if t in (bool, str) and isinstance(value, t):
        return value
    raise _bad(field, value, f"must be {t.__name__}, got {type(value).__name__}")


def _bad(field: Field, value, problem: str) -> ConfigError:
    hint = f" ({field.doc})" if field.doc else ""
    return ConfigError(f"recipe field {field.path}={value!r}: {problem}{hint}; set "
                       f"--config.{field.path}=... or fix the recipe")


def resolve(config, overrides: Iterable[Tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """The complete, checked, locked config of a recipe.

    Args:
      config: the recipe's ``ConfigDict`` (or dict); may leave fields out, may
        already be resolved.
      overrides: ``(dotted path, text)`` pairs from ``--config.a.b=text``.

    Raises:
      ConfigError: an unknown field or override, a value of the wrong type or
        out of range, or a field a listed stage needs that is unset.
    """
    given: Dict[str, Any] = {}
    _flatten(_plain(config), "", given)
    values = {path: _plain(field.default) for path, field in BY_PATH.items()}
    values.update(given)
    for path, text in overrides:
        inside = _free_dict_of(path)
        if path in BY_PATH:
            values[path] = parse_value(path, text)
        elif inside is not None:
            node = values[inside] = dict(values[inside] or {})
            *keys, last = path[len(inside) + 1:].split(".")
            for key in keys:
                node = node.setdefault(key, {})
            node[last] = parse_value(path, text)
        else:
            raise unknown_field(path, "--config override")
    for path, field in BY_PATH.items():
        values[path] = value = _coerce(field, values[path])
        if value is None:
            continue
        for check in field.checks:
            problem = check(value)
            if problem:
                raise _bad(field, value, problem)
    stages = values["stages"]
    for path, field in BY_PATH.items():
        if field.required_by and values[path] is None and (
                field.required_by == "always" or field.required_by in stages):
            when = "" if field.required_by == "always" else \
                f" when config.stages holds {field.required_by!r}"
            raise ConfigError(f"recipe field {path} is required{when} ({field.doc}); set "
                              f"--config.{path}=... or add it to the recipe")
    return _nest(values)


def _nest(values: Dict[str, Any]) -> ml_collections.ConfigDict:
    root: Dict[str, Any] = {}
    for path, value in values.items():
        node = root
        *sections, last = path.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[last] = value
    config = ml_collections.ConfigDict(root)
    config.lock()
    return config


def to_dict(config) -> Dict[str, Any]:
    """A resolved config as plain JSON-ready data (tuples as lists)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return plain(_plain(config))


def section_train_config(config, section: str) -> ml_collections.ConfigDict:
    """``config.train`` with the optimizer fields a stage section sets
    (``stage_optimizer``): None keeps ``train``'s value."""
    merged = config.train.copy_and_resolve_references()
    for name, _, _ in INHERITED:
        value = config[section][name]
        if value is not None:
            merged[name] = value
    return merged


def field_docs(sections: Sequence[str] = ()) -> str:
    """The table as text (``path  type  default  doc``), for docs and --help."""
    rows = [f for f in FIELDS if not sections or f.path.split(".")[0] in sections]
    return "\n".join(f"{f.path:<40} {getattr(f.type, '__name__', f.type)!s:<6} "
                     f"{f.default!r:<18} {f.doc}" for f in rows)
