"""Trained Ternary Quantization (Zhu, Han, Mao, Dally, ICLR 2017) of
ResNet-20/32/56 on CIFAR-10, fine-tuned from a float model.

Reproduces the paper's CIFAR-10 errors (float -> TTQ): ResNet-20 8.23 ->
8.87, ResNet-32 7.67 -> 7.63, ResNet-56 6.80 -> 6.44.

Recipe (facts in DESIGN.md): per layer delta = 0.05 * max|w|; weights above
delta become +Wp, below -delta -Wn, the rest 0; Wp and Wn are trained
scalars; the first conv (with its BN) and the last Dense stay float
(``mntk.quantization.default_skip``).

Departures: the float and fine-tuning schedules are our choices (float: SGD
0.1 with momentum, cosine, 160 epochs, weight decay 1e-4 as in He et al.;
TTQ: Adam 1e-3 (scaled with replicas), cosine, 100 epochs), not the paper's
exact ones; the ResNets use 1x1-conv shortcuts where shapes change (option
B), not zero-padding (option A).

Stages: train (float) -> export (float/int8 TFLite of the float model) ->
quantize (TTQ fine-tuning from it, int8 TFLite with ternary values verified
with LiteRT).

Run:   mntk train --config=recipes/ttq_cifar10.py --workdir=runs/ttq20
       mntk train --config=recipes/ttq_cifar10.py:resnet56 --workdir=runs/ttq56
Smoke: mntk train --config=recipes/ttq_cifar10.py:smoke --workdir=/tmp/ttq
       (``resnet32,smoke`` combines the two)
"""
import ml_collections

DEPTHS = ("resnet20", "resnet32", "resnet56")
PUBLISHED_ERROR = {"resnet20": (8.23, 8.87), "resnet32": (7.67, 7.63),
                   "resnet56": (6.80, 6.44)}   # (float, TTQ) top-1 error %


def get_config(arg=None):
    args = [a for a in (arg or "").split(",") if a]
    unknown = [a for a in args if a not in DEPTHS + ("smoke",)]
    if unknown:
        raise ValueError(f"ttq_cifar10: unknown config argument(s) {unknown}; use one of "
                         f"{', '.join(DEPTHS)} and/or 'smoke', comma-separated.")
    depth = next((a for a in args if a in DEPTHS), "resnet20")
    c = ml_collections.ConfigDict()
    c.name = f"ttq_cifar10_{depth}"
    c.seed = 0
    c.smoke = "smoke" in args
    c.strategy = "default"       # default | mirrored | multi_worker | tpu
    c.tpu = ""
    c.verbose = 2
    c.stages = ("train", "export", "quantize")
    c.published_error = PUBLISHED_ERROR[depth]

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.batch_size = 128      # per replica

    c.model = ml_collections.ConfigDict()
    c.model.name = depth
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 160
    c.train.optimizer = "sgd"
    c.train.nesterov = False
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.schedule = "cosine"
    c.train.weight_decay = 1e-4
    c.train.scale_with_replicas = True
    c.train.max_steps_per_epoch = 0

    c.tricks = ml_collections.ConfigDict()

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "cifar100"     # CIFAR-10 is not a MicroNet task: CIFAR-100 baselines for scale
    c.cost.freebie = False
    c.cost.note = "CIFAR-10 model scored against the CIFAR-100 baselines, for scale only"

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "ternary"
    c.quantize.threshold = 0.05
    c.quantize.skip = "default"  # first conv + BN and last Dense stay float
    c.quantize.epochs = 100
    c.quantize.optimizer = "adam"
    c.quantize.learning_rate = 1e-3
    c.quantize.schedule = "cosine"

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    c.export.verify_examples = 2000

    if c.smoke:
        smoke(c)
    return c


def smoke(c):
    """Seconds on CPU: digits at 32x32 RGB (10 classes, like CIFAR-10)."""
    c.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 32, "channels": 3, "batch_size": 32,
         "fractions": (0.6, 0.2, 0.2)})
    c.train.epochs = 2
    c.train.max_steps_per_epoch = 8
    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-3
    c.quantize.epochs = 2
    c.quantize.learning_rate = 1e-3
    c.export.representative_examples = 32
    c.export.verify_examples = 64
