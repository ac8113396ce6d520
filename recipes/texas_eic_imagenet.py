"""Texas-EIC's MicroNet 2019 ImageNet entry: EfficientNet-B0 with learned
channel-wise range and precision, pushed toward a cost target, distilled from
the float model.

Reproduces: 75.0% top-1 on ImageNet at 2.94 average weight bits and 4.87
average activation bits.

Recipe (facts in DESIGN.md): every weight channel c gets a learned range
(scale and shift around its initial min/max) and a learned precision
b_c = clip(round(gamma_c * 8), 2, 8) (straight-through round), activations a
learned per-tensor range and precision; loss = distillation from the float
model (Hinton et al. 2015) + a cost term that pushes the mean weight bits
toward the target and flips sign below it (``mntk.losses.CostTarget``); then
the bit widths are frozen (``mntk.quantization.freeze_precision``) and ranges
and weights fine-tuned.

Departures: the float stage trains B0 from scratch (the entry started from a
trained B0; point ``--config.train.epochs=0`` at a pretrained model to skip
it: see BUILD.md); the cost term targets mean weight bits (2.94), activations
learn their precision through the task loss only; the schedules (float:
SGD Nesterov, cosine, 350 epochs; QAT 30 + 10 epochs with Adam) are our
choices; TFLite holds sub-8-bit activations in int8 containers.

Stages: train (float) -> quantize (learned precision, cost target,
distillation) -> finetune (bits frozen), each ending with int8 TFLite
verified with LiteRT.

Run:   mntk train --config=recipes/texas_eic_imagenet.py --workdir=runs/texas \\
           --config.data.data_dir=$TFDS_DATA_DIR
Smoke: mntk train --config=recipes/texas_eic_imagenet.py:smoke --workdir=/tmp/texas
       (the digits CNN on digits at 32x32 RGB)
"""
import ml_collections


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "texas_eic_imagenet"
    c.seed = 0
    c.smoke = arg == "smoke"
    c.strategy = "default"       # default | mirrored | multi_worker | tpu
    c.tpu = ""
    c.verbose = 2
    c.stages = ("train", "quantize", "finetune")

    c.data = ml_collections.ConfigDict()
    c.data.name = "imagenet2012"
    c.data.batch_size = 128      # per replica
    c.data.image_size = 224
    # 1,271,167 / 10,000 / 50,000: bits and ranges are checked on held-out train images
    c.data.split_names = ml_collections.ConfigDict(
        {"train": "train[10000:]", "validation": "train[:10000]", "test": "validation"})

    c.model = ml_collections.ConfigDict()
    c.model.name = "efficientnet_b0"
    c.model.classifier = "logits"
    c.model.kwargs = ml_collections.ConfigDict({"dropout": 0.2, "drop_connect_rate": 0.2})

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 350
    c.train.optimizer = "sgd"
    c.train.nesterov = True
    c.train.momentum = 0.9
    c.train.learning_rate = 0.05  # per 128 examples; scaled by the replica count
    c.train.schedule = "cosine"
    c.train.weight_decay = 1e-5
    c.train.scale_with_replicas = True
    c.train.max_steps_per_epoch = 0

    c.tricks = ml_collections.ConfigDict()

    c.cost = ml_collections.ConfigDict()
    c.cost.task = "imagenet"
    c.cost.freebie = False

    c.quantize = ml_collections.ConfigDict()
    c.quantize.scheme = "learned"
    c.quantize.init_bits = 8
    c.quantize.min_bits = 2
    c.quantize.max_bits = 8
    c.quantize.learn_activations = True
    c.quantize.skip = "none"
    c.quantize.epochs = 30
    c.quantize.optimizer = "adam"
    c.quantize.learning_rate = 1e-4
    c.quantize.schedule = "cosine"
    c.quantize.cost_target = ml_collections.ConfigDict(
        {"enabled": True, "target": 2.94, "coefficient": 0.1,
         "include_activations": False})
    c.quantize.distillation = ml_collections.ConfigDict(
        {"enabled": True, "temperature": 4.0, "alpha": 0.5})

    c.finetune = ml_collections.ConfigDict()
    c.finetune.epochs = 10
    c.finetune.learning_rate = 2e-5
    c.finetune.schedule = "cosine"
    c.finetune.optimizer = "adam"

    c.export = ml_collections.ConfigDict()
    c.export.verify_examples = 2000

    if c.smoke:
        smoke(c)
    return c


def smoke(c):
    """Under a minute on CPU: the mntk digits CNN (every layer kind of B0:
    depthwise, inverted residual, squeeze-excite) on digits at 32x32 RGB;
    a QAT B0 takes minutes just to trace on 2 cores."""
    c.data = ml_collections.ConfigDict(
        {"name": "digits", "image_size": 32, "channels": 3, "batch_size": 32,
         "fractions": (0.6, 0.2, 0.2)})
    c.model.name = "digits_cnn"
    c.model.kwargs = ml_collections.ConfigDict({"width": 16})
    c.cost.task = "imagenet"
    c.train.epochs = 2
    c.train.max_steps_per_epoch = 8
    c.train.optimizer = "adam"
    c.train.learning_rate = 3e-3
    c.quantize.epochs = 2
    # a large step so that the bit widths visibly fall toward the target in 16 steps
    c.quantize.learning_rate = 1e-2
    c.finetune.epochs = 1
    c.finetune.learning_rate = 1e-4
    c.export.verify_examples = 64
