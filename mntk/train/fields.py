"""The table of recipe fields: every field the runner reads, its type, default and check.

``FIELDS`` below is the one table of recipe fields; it is the only place a
default lives. ``mntk.train.schema.resolve`` reads a recipe against it (and
re-exports every name here, so ``mntk.train.schema.FIELDS`` is this table).

Adding a field is one line in ``FIELDS``::

    F("prune.global_threshold", bool, False, doc="one magnitude threshold for all layers"),

with ``F(path, type, default, *checks, doc=..., required_by=STAGE)``:
``type`` is ``bool``, ``int``, ``float``, ``str``, ``tuple`` or ``dict``
(``dict``: free-form, e.g. ``model.kwargs``); ``default=None`` means "unset"
(the field may then hold None); ``checks`` are callables from the ``checks``
section (``positive``, ``non_negative``, ``fraction``, ``at_least(n)``,
``one_of(...)``, ...); ``required_by="quantize"`` makes a None value an error
when that stage is in ``config.stages``; ``output_only=True`` marks a field a
rerun of a finished work directory may change (``config.json`` check). Adding a stage section with its own
optimizer settings is one line too: ``*stage_optimizer("qat8")`` gives it
``qat8.epochs``, ``qat8.learning_rate``, ... defaulting to ``train``'s
(``mntk.train.schema.section_train_config``).

``smoke`` is set by a recipe's ``smoke`` argument
(``--config=recipes/X.py:smoke``); on the command line ``--config.smoke=True``
reloads the recipe with that argument (``mntk.cli``), so it applies the smoke
settings instead of only flipping the flag.
"""
import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

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


def loss_phases(v):
    for i, p in enumerate(v):
        if not (isinstance(p, (tuple, list)) and len(p) == 4 and _number(p[0])
                and float(p[0]).is_integer() and p[0] >= 1 and _number(p[1]) and p[1] >= 0
                and _number(p[2]) and p[2] >= 0 and isinstance(p[3], bool)):
            return (f"phase {i} {p!r} must be (epochs >= 1, alpha >= 0, beta >= 0, "
                    "train_bits True/False), e.g. ((3, 7.0, 85.0, True), (3, 7.0, 115.0, True))")
    return None


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
    F("run_eagerly", bool, False,
      doc="every stage's fit runs its steps eagerly (Keras run_eagerly): for debugging, and "
          "for runs of a few steps, where tracing the train step costs more than running it"),
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
    F("early_exit.weight_gradient", bool, False,
      doc="confidence_weighted: the gradient flows through the (1 + max softmax) weight (OSI)"),
    F("early_exit.freeze_backbone", bool, True),
    F("early_exit.criterion", str, "max_softmax", one_of("max_softmax", "entropy")),
    F("early_exit.max_examples", int, 0, at_least(0), doc="0: whole val/test split"),
    F("early_exit.threshold", float, None, fraction,
      doc="a fixed exit threshold (OSI: 0.85 max softmax) instead of early_exit.target"),
    F("early_exit.backbone_bn_updates", bool, False,
      doc="frozen backbone's BatchNorm keeps updating its statistics (OSI)"),
    F("early_exit.mix", str, None, one_of(None, "none", "mixup", "cutmix"),
      doc="the head training's batch mixing (None: data.mix; OSI: 'none')"),
    F("early_exit.label_smoothing", float, None, below_one,
      doc="the head training's final-output smoothing (None: train.label_smoothing)"),
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
    # prune_exits: the early_exit stage's heads pruned on the held backbone
    F("prune_exits.rates", tuple, (), each(below_one),
      doc="global rates over the chosen layers, one per stage of prune_exits.epochs / len"),
    F("prune_exits.normalize", str, "none", one_of("none", "l2"), doc="OSI: l2"),
    F("prune_exits.rewind", str, "none", one_of("none", "best", "stage_start"),
      doc="best: by the first exit's validation accuracy"),
    F("prune_exits.layers", tuple, (),
      doc="layers to prune (empty: every exit head layer); the others keep their zeros"),
    *stage_optimizer("prune_exits"),
    # quantize (learned-scheme bit fields: None is the scheme's own default)
    F("quantize.scheme", str, None, one_of(None, *SCHEMES), required_by="quantize"),
    F("quantize.threshold", float, 0.05, positive, doc="ternary threshold x max|w|"),
    F("quantize.ternary_init", str, "mean", one_of("mean", "ones"),
      doc="ternary Wp/Wn start: the layer's mean |w| per side, or 1.0 (the TTQ code)"),
    F("quantize.decay_scales", bool, False,
      doc="ternary Wp/Wn under the coupled L2 of the kernels (l2_on='kernels'; TTQ code)"),
    F("quantize.skip", object, "default", skip_layers, doc="layers left float"),
    F("quantize.init_bits", int, None, at_least(1)),
    F("quantize.min_bits", int, None, at_least(1)),
    F("quantize.max_bits", int, None, at_least(1)),
    F("quantize.learn_activations", bool, None),
    F("quantize.activation_init_bits", int, None, at_least(1)),
    F("quantize.activation_min_bits", int, None, at_least(1)),
    F("quantize.activation_max_bits", int, None, at_least(1)),
    F("quantize.activation_per_channel", bool, None,
      doc="learned activation grids per channel (Texas-EIC); TFLite maps them per tensor"),
    F("quantize.cost_target.enabled", bool, False, doc="mntk.losses.CostTarget"),
    F("quantize.cost_target.target", float, None, positive,
      doc="the measure's target (mean bits, or the MicroNet score: Texas-EIC 0.18)"),
    F("quantize.cost_target.coefficient", float, 0.1, non_negative,
      doc="its weight (quantize.phases set it per phase: their beta)"),
    F("quantize.cost_target.include_activations", bool, False),
    F("quantize.cost_target.measure", str, "weight_bits", one_of("weight_bits", "bits", "score"),
      doc="mean weight bits, mean weight+activation bits, or the differentiable score M"),
    F("quantize.cost_target.relative", bool, True,
      doc="divide by the target (False: the entry's sign(M - target) * beta * M)"),
    F("quantize.distillation.enabled", bool, False, doc="from the float model"),
    F("quantize.distillation.form", str, "hinton", one_of("hinton", "logit_distance"),
      doc="mntk.losses.Distillation, or Texas-EIC's distance * sum sqrt((z - t)^2 + 1e-5) "
      "(mntk.quantization.CrossEntropyWithLogitDistance)"),
    F("quantize.distillation.temperature", float, 4.0, positive),
    F("quantize.distillation.alpha", float, 0.5, fraction, doc="hinton: the KD share"),
    F("quantize.distillation.distance", float, 0.01, non_negative,
      doc="logit_distance: its weight (Texas-EIC 0.01)"),
    F("quantize.phases", tuple, (), loss_phases,
      doc="learned: loss phases (epochs, alpha, beta, train_bits): alpha weights the "
      "cross-entropy, beta is the cost term's coefficient (mntk.quantization.PrecisionPhases); "
      "their epochs are the stage's"),
    F("quantize.bits_learning_rate", float, None, positive,
      doc="learned: the bit widths' own Adam rate (mntk.quantization.BitWidthAdam; "
      "Texas-EIC 1e-3); None: the stage's rate"),
    F("quantize.bits_tenths", str, "all", one_of("all", "alternate"),
      doc="learned: bits trained in every step, or in alternate tenths of an epoch (Texas-EIC)"),
    F("quantize.init_ranges", str, "calibrate", one_of("calibrate", "qat8"),
      doc="learned: ranges from the first batch, or the qat8 stage's 8-bit ranges "
      "(mntk.quantization.transfer)"),
    *stage_optimizer("quantize"),
    # qat8: 8-bit QAT of a trained float model (init_from or the previous stage's)
    F("qat8.label_smoothing", float, 0.0, below_one,
      doc="label smoothing of the QAT cross-entropy, integer labels too (Texas-EIC 0.1)"),
    F("qat8.ema_decay", float, 0.0, below_one,
      doc="EMA of the weights (the optimizer's use_ema); the stage evaluates and hands on "
      "the averaged weights (Texas-EIC 0.9999); 0: off"),
    *stage_optimizer("qat8"),
    # finetune
    F("finetune.alpha", float, 1.0, non_negative,
      doc="weight of the cross-entropy when quantize.phases or the logit_distance "
      "distillation is on (Texas-EIC's last phase: 25)"),
    F("finetune.swa.enabled", bool, False, doc="mntk.callbacks.StochasticWeightAveraging"),
    F("finetune.swa.start", float, 0.0, non_negative, doc="epochs before the first average"),
    F("finetune.swa.period", float, 1.0, positive, doc="epochs between averaged points"),
    F("finetune.swa.cycle", int, 0, at_least(0),
      doc="load the average into the model and start a new one every this many epochs "
      "(Texas-EIC: three 1-epoch SWA runs); 0: one average over the stage"),
    F("finetune.swa.recompute_bn", bool, True,
      doc="recompute BatchNorm statistics for the average (one pass over the training data)"),
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
