"""Trained Ternary Quantization (Zhu, Han, Mao, Dally, ICLR 2017) of the
pre-activation ResNet-20/32/56 on CIFAR-10, as the paper's official code does
it (czhu95/ternarynet @1a67251, examples/Ternary-Net/tw-cifar10-resnet.py,
ternary.py, examples/ResNet/cifar10-resnet.py; facts in ENTRIES.md).

Reproduces the published CIFAR-10 errors (float -> TTQ): ResNet-20 8.23 ->
8.87, ResNet-32 7.67 -> 7.63, ResNet-56 6.80 -> 6.44 (the logged ResNet-20
TTQ run: best 8.48%, final 9.25%). TTQ is no MicroNet entry, so its only
score is the official one (CIFAR-10 counted against the CIFAR-100 baselines,
for scale): see ``summary.json`` after the quantize stage.

Network (``mntk.models.resnet_preact``): pre-activation units (BN-ReLU-conv)
with option-A shortcuts (avg-pool 2 + zero channels), final BN-ReLU-GAP-FC;
269,722 trainable parameters at depth 20 (269,760 in the code's log with the
19 ternarized layers' two scales). Init N(0, sqrt(2/(9*out))), FC
uniform_unit_scaling(1.43), BN decay 0.9.

Training, float and TTQ alike: momentum 0.9 (no Nesterov), lr 0.1, 0.01 at
epoch 82, 0.001 at 123, 0.0002 at 300, 400 epochs, coupled L2 2e-4 on the
conv and FC kernels, global batch 256 (128 on each of 2 GPUs, gradients
averaged), pad-to-40 random crop + flip. TTQ starts from the float model:
every kernel but the first conv (``stem_conv``) is ternarized, the FC layer
included; threshold 0.05 * max|w| per layer; Wp = Wn = 1 at the start
(``quantize.ternary_init="ones"``), weight-decayed with the kernels
(``quantize.decay_scales``).

Departures, and why:
- Input scaling: ``mntk.data``'s per-channel mean/std instead of the code's
  image/128 - 1 and per-pixel mean subtraction (a fixed affine map of the
  input; the first conv and BN absorb it).

Stages: train (float) -> export (float/int8 TFLite of the float model) ->
quantize (TTQ from it, int8 TFLite with ternary values verified by LiteRT).

One GPU: 2 x 400 epochs of CIFAR-10 at batch 256; estimated 2 h (ResNet-20)
to 5 h (ResNet-56) on one H100-class GPU (not measured).

Run:   mntk train --config=recipes/ttq_cifar10.py --workdir=runs/ttq20
       mntk train --config=recipes/ttq_cifar10.py:resnet56 --workdir=runs/ttq56
Smoke: mntk train --config=recipes/ttq_cifar10.py:smoke --workdir=/tmp/ttq
       (``resnet32,smoke`` combines the two)
"""
import ml_collections

DEPTHS = ("resnet20", "resnet32", "resnet56")
PUBLISHED_ERROR = {"resnet20": (8.23, 8.87), "resnet32": (7.67, 7.63),
                   "resnet56": (6.80, 6.44)}   # (float, TTQ) top-1 error %
STEP_EPOCHS = (82, 123, 300)
STEP_RATES = (0.01, 0.001, 0.0002)


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
    c.strategy = "default"
    c.verbose = 2
    c.stages = ("train", "export", "quantize")
    c.published_error = PUBLISHED_ERROR[depth]

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar10"
    c.data.batch_size = 256      # the code's global batch (2 GPUs x 128)

    c.model = ml_collections.ConfigDict()
    c.model.name = f"preact_{depth}"
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 400
    c.train.optimizer = "sgd"
    c.train.nesterov = False
    c.train.momentum = 0.9
    c.train.learning_rate = 0.1
    c.train.schedule = "step"
    c.train.step_epochs = STEP_EPOCHS
    c.train.step_learning_rates = STEP_RATES
    c.train.weight_decay = 0.0
    c.train.l2 = 2e-4
    c.train.l2_on = "kernels"
    c.train.scale_with_replicas = False   # 256 is the global batch on any replica count
    c.train.max_steps_per_epoch = 0

    c.tricks = ml_collections.ConfigDict()

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "cifar100"     # CIFAR-10 is not a MicroNet task: CIFAR-100 baselines for scale
    c.cost.freebie = False
    c.cost.note = "CIFAR-10 model scored against the CIFAR-100 baselines, for scale only"

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "ternary"
    c.quantize.threshold = 0.05
    c.quantize.ternary_init = "ones"     # Wp = Wn = 1.0 at the start (ternary.py)
    c.quantize.decay_scales = True       # Wp, Wn under the kernels' L2 2e-4 (ternary.py:30-53)
    c.quantize.skip = ("stem_conv",)   # the FC layer is ternarized too
    c.quantize.epochs = 400
    c.quantize.optimizer = "sgd"
    c.quantize.learning_rate = 0.1
    c.quantize.schedule = "step"

    c.export = ml_collections.ConfigDict()
    c.export.kinds = ("float", "int8")
    c.export.representative_examples = 200
    c.export.verify_examples = 2000

    if c.smoke:
        # a depth named with 'smoke' (resnet32,smoke) is the network smoked
        smoke(c, shallow=not any(a in DEPTHS for a in args))
    return c


def smoke(c, shallow=True):
    """Seconds on CPU: digits at 16x16 RGB (10 classes, like CIFAR-10), the
    pre-activation ResNet at depth 8 unless a depth is named (``shallow``:
    one unit per stage, every kind of unit and shortcut of ResNet-20, a third
    of its layers to trace)."""
    c.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 16, "channels": 3, "batch_size": 32,
         "fractions": (0.6, 0.2, 0.2)})
    if shallow:
        c.model.name = "resnet_preact"
        c.model.kwargs = ml_collections.ConfigDict({"depth": 8})
    c.train.epochs = 2
    c.train.step_epochs = (1,)
    c.train.step_learning_rates = (0.01,)
    c.train.max_steps_per_epoch = 8
    c.train.learning_rate = 0.05
    c.quantize.epochs = 2
    c.quantize.learning_rate = 0.01
    c.export.representative_examples = 32
    c.export.verify_examples = 64
