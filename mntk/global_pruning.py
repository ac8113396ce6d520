"""Global magnitude pruning: one threshold over all chosen layers, in stages.

tfmot prunes each layer to the same rate; global pruning ranks every weight of
every chosen layer together (Han et al. 2015, arXiv 1506.02626; the "global"
variant of arXiv 1606.09274), so layers with many small weights lose more.

For a rate r and the chosen weight tensors W_1..W_L (by default every trainable
weight of rank >= 2: conv, depthwise, squeeze-excite, shortcut and dense
kernels), with the current masks M_l applied:

    score_l = |W_l * M_l|                      (normalize=None, KAIST)
    score_l = |W_l * M_l| / ||W_l * M_l||_2    (normalize="l2", OSI: each
                                                tensor's scores divided by
                                                its own L2 norm)
    t = percentile(concat(score_1..score_L), 100 r)   (linear interpolation)
    M_l = score_l > t                          (ties at t are pruned)

which is what the KAIST (Pruning/methods.py:9-26) and OSI-AI
(models/pruning/methods.py:11-56) entries computed. Pruned weights stay zero:
the masks are re-applied after every training step, so the model stays a
plain Keras model whose zeros ``mntk.cost`` counts as sparse and which
``mntk.export`` converts as it is (there is no wrapper to strip).

Iterative pruning with rewinding (KAIST, Utils/train_32bit.py:138-231): each
stage computes the masks from the current weights at a higher rate, then
reloads the weights the stage starts from (the previous stage's best weights,
``rewind="best"``) and applies the new masks. ``rewind="stage_start"`` reloads
the weights the finished stage started from (lottery-ticket style, Frankle &
Carbin 2019); ``rewind=None`` keeps the current weights (OSI).

    gp = mntk.global_pruning.GlobalPruning(model, stages={0: 0.45, 150: 0.6},
                                           rewind="best", monitor="val_accuracy")
    model.fit(..., epochs=300, callbacks=[gp])        # masks fixed between stages

    gp = mntk.global_pruning.GlobalPruning(model)     # by hand, one stage
    gp.prune(0.6, rewind_to="best.weights.h5")
    model.fit(..., callbacks=[gp])

Pruning part of a model on top of an earlier pruning (OSI-AI's exit head,
pruned after the backbone was): ``layers`` chooses what is ranked and newly
pruned, ``hold_zeros=True`` keeps every other prunable weight's zeros (masks
from them, re-applied after every step, never recomputed)::

    heads = mntk.early_exit.exit_head_layers(multi)
    gp = GlobalPruning(multi, stages={0: 0.1, 600: 0.2}, layers=heads, hold_zeros=True)

Resuming: ``gp.variables`` (masks, stage counter, rewind snapshot, best metric)
are ``tf.Variable``s; checkpoint them beside the model (the runner's
``StateBackup``). ``GlobalPruning.masks_from_zeros(model)`` rebuilds masks from
a pruned model's zeros.
"""
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from mntk.compat import ensure_tf_keras, keras

__all__ = ["prunable_weights", "global_scores", "global_threshold", "global_masks",
           "GlobalPruning", "NORMALIZATIONS", "REWIND_MODES"]

NORMALIZATIONS = (None, "l2")
REWIND_MODES = (None, "best", "stage_start")

LayerSelector = Union[None, str, Iterable[str], Callable]


def _wanted(layers: LayerSelector, model) -> Callable:
    if layers is None:
        return lambda layer: True
    if callable(layers):
        return layers
    names = {layers} if isinstance(layers, str) else set(layers)
    known = {l.name for l in model._flatten_layers(include_self=False, recursive=True)}
    unknown = names - known
    if unknown:
        raise ValueError(f"global pruning: layers {sorted(unknown)} are not in model "
                         f"{model.name!r}; pass names from model.layers or a predicate.")
    return lambda layer: layer.name in names


def prunable_weights(model, layers: LayerSelector = None,
                     min_rank: int = 2) -> List[Tuple[str, tf.Variable]]:
    """``[(layer name, variable)]``: every trainable weight of rank >= ``min_rank``
    that a chosen layer owns directly (nested models and wrappers are walked).

    ``layers``: None (all), a name, names, or a predicate ``layer -> bool``.
    Rank >= 2 are the kernels (conv, depthwise, dense); biases, BatchNorm and
    the 1-D parameters of quantizers are never pruned, as in both entries.
    """
    ensure_tf_keras(model, "model")
    keep = _wanted(layers, model)
    seen, out = set(), []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not keep(layer):
            continue
        for variable in getattr(layer, "_trainable_weights", []):
            if variable.shape.rank is None or variable.shape.rank < min_rank:
                continue
            if variable.ref() in seen:
                continue
            seen.add(variable.ref())
            out.append((layer.name, variable))
    if not out:
        raise ValueError(f"global pruning: model {model.name!r} has no trainable weight of "
                         f"rank >= {min_rank} in the chosen layers ({layers!r}).")
    return out


def _check(rate, normalize):
    if not 0.0 <= float(rate) < 1.0:
        raise ValueError(f"global pruning: rate={rate!r} must be in [0, 1) (a fraction "
                         "of the chosen weights, e.g. 0.6 for 60%).")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"global pruning: normalize={normalize!r}; use one of "
                         f"{NORMALIZATIONS} (None: |w|; 'l2': |w| / ||layer||_2, OSI).")


def global_scores(arrays: Sequence[np.ndarray], normalize: Optional[str] = None):
    """Per-tensor scores |w| or |w| / ||w||_2 (a tensor of zeros scores 0)."""
    _check(0.0, normalize)
    scores = []
    for array in arrays:
        score = np.abs(np.asarray(array, np.float64))
        if normalize == "l2":
            norm = np.sqrt(np.sum(score * score))
            score = score / norm if norm > 0 else score
        scores.append(score)
    return scores


def global_threshold(arrays: Sequence[np.ndarray], rate: float,
                     normalize: Optional[str] = None) -> float:
    """The ``100 * rate`` percentile of all scores together (numpy's linear
    interpolation, as the entries used)."""
    _check(rate, normalize)
    flat = np.concatenate([s.reshape(-1) for s in global_scores(arrays, normalize)])
    return float(np.percentile(flat, 100.0 * float(rate)))


def global_masks(arrays: Sequence[np.ndarray], rate: float,
                 normalize: Optional[str] = None) -> List[np.ndarray]:
    """Keep-masks (float32 0/1) for ``arrays``: score > the global threshold.

    ``rate=0`` keeps everything (the percentile at 0 is the minimum, and a
    strict ``>`` would otherwise drop the smallest weight).
    """
    _check(rate, normalize)
    if float(rate) == 0.0:
        return [np.ones(np.shape(a), np.float32) for a in arrays]
    threshold = global_threshold(arrays, rate, normalize)
    return [(s > threshold).astype(np.float32) for s in global_scores(arrays, normalize)]


def _better(mode: str, value: float, best: float) -> bool:
    return value > best if mode == "max" else value < best


@keras.utils.register_keras_serializable(package="mntk")
class GlobalPruning(keras.callbacks.Callback):
    """Global magnitude masks kept fixed during ``model.fit``, with optional stages.

    Args:
      model: the model to prune (needed up front so the mask variables exist
        before a checkpoint that restores them is built); None: set by
        ``model.fit`` (then ``variables`` exist only after ``set_model``).
      stages: ``{first_epoch: rate}`` or ``[(first_epoch, rate), ...]``; at the
        start of each listed epoch (0-based) the masks are recomputed at
        ``rate`` from the current weights, the weights rewound (``rewind``) and
        the masks applied. None: masks change only through ``prune``.
      normalize: None (KAIST: raw |w|) or "l2" (OSI: |w| / the tensor's L2 norm).
      rewind: None (keep the current weights, OSI), "best" (reload the weights
        of the best epoch so far, by ``monitor``, KAIST) or "stage_start"
        (reload the weights the finished stage started from).
      layers: layers to prune (None: all; names; or a predicate).
      monitor, mode: the epoch-log metric "best" tracks and its direction.
      hold_zeros: the prunable weights of the layers NOT chosen by ``layers``
        keep the zeros they have when the model is set (a pruned backbone
        under newly pruned exit heads): fixed masks, applied with the others.
    """

    def __init__(self, model=None, stages=None, normalize=None, rewind=None,
                 layers=None, monitor="val_accuracy", mode="max", hold_zeros=False):
        super().__init__()
        _check(0.0, normalize)
        if hold_zeros and layers is None:
            raise ValueError("GlobalPruning(hold_zeros=True) holds the zeros of the layers "
                             "not pruned, so it needs layers= (names or a predicate).")
        self.hold_zeros = bool(hold_zeros)
        if rewind not in REWIND_MODES:
            raise ValueError(f"GlobalPruning: rewind={rewind!r}; use one of {REWIND_MODES}.")
        if mode not in ("max", "min"):
            raise ValueError(f"GlobalPruning: mode={mode!r}; use 'max' or 'min'.")
        if isinstance(stages, dict):
            stages = list(stages.items())
        self.stages = None if stages is None else sorted(
            (int(e), float(r)) for e, r in stages)
        if self.stages is not None:
            if not self.stages or self.stages[0][0] < 0:
                raise ValueError(f"GlobalPruning: stages={stages!r}; need a non-empty "
                                 "{first_epoch >= 0: rate} map.")
            for _, rate in self.stages:
                _check(rate, normalize)
        self.normalize = normalize
        self.rewind = rewind
        self.layers = layers
        self.monitor = monitor
        self.mode = mode
        self._built_for = None
        if model is not None:
            self.set_model(model)

    # -- state -------------------------------------------------------------
    def set_model(self, model):
        super().set_model(model)
        if self._built_for is model:
            return
        if self._built_for is not None:
            raise ValueError(
                f"GlobalPruning was built for model {self._built_for.name!r}; make a new "
                f"one for model {model.name!r}.")
        self._built_for = model
        self._targets = prunable_weights(model, self.layers)
        self._held = []
        if self.hold_zeros:
            chosen = {v.ref() for _, v in self._targets}
            everything = prunable_weights(model)
            self._held = [(n, v) for n, v in everything if v.ref() not in chosen]
        # Variables are created where the model's are, so a strategy mirrors them.
        with model.distribute_strategy.scope():
            self.masks = [tf.Variable(tf.ones(v.shape, v.dtype), trainable=False,
                                      name=f"global_mask_{i}")
                          for i, (_, v) in enumerate(self._targets)]
            self.stage = tf.Variable(0, dtype=tf.int64, trainable=False,
                                     name="global_pruning_stage")
            self.held_masks = [tf.Variable(tf.cast(tf.not_equal(v, 0), v.dtype),
                                           trainable=False, name=f"held_mask_{i}")
                               for i, (_, v) in enumerate(self._held)]
            self.snapshot, self.best = [], None
            if self.rewind is not None:
                self.snapshot = [tf.Variable(v, trainable=False, name=f"rewind_{i}")
                                 for i, v in enumerate(model.weights)]
                start = -np.inf if self.mode == "max" else np.inf
                self.best = tf.Variable(start, dtype=tf.float64, trainable=False,
                                        name="global_pruning_best")
        self._apply_fn = tf.function(self._apply_masks)

    @property
    def variables(self) -> List[tf.Variable]:
        """Everything a resumed run needs: masks, stage counter, snapshot, best
        (and the held masks, ``hold_zeros``)."""
        out = list(self.masks) + [self.stage] + list(self.snapshot)
        return out + ([self.best] if self.best is not None else []) + list(self.held_masks)

    def _apply_masks(self):
        for (_, variable), mask in zip(self._targets + self._held,
                                       self.masks + self.held_masks):
            variable.assign(variable * mask)

    def apply(self):
        """Zero the masked weights now (done after every training step)."""
        self._apply_fn()

    def _take_snapshot(self):
        for saved, variable in zip(self.snapshot, self._built_for.weights):
            saved.assign(variable)

    # -- pruning -----------------------------------------------------------
    def compute_masks(self, rate: float) -> List[np.ndarray]:
        """Masks at ``rate`` from the current (masked) weights; nothing is changed."""
        arrays = [v.numpy() * m.numpy() for (_, v), m in zip(self._targets, self.masks)]
        return global_masks(arrays, rate, self.normalize)

    def prune(self, rate: float, rewind_to=None) -> List[np.ndarray]:
        """Recompute the masks at ``rate`` from the current weights, then load
        ``rewind_to`` (``model.get_weights()`` values, or a weights file path for
        ``model.load_weights``) if given, then apply the masks. Returns the masks."""
        if self._built_for is None:
            raise ValueError("GlobalPruning.prune: no model yet; pass model= to the "
                             "constructor.")
        masks = self.compute_masks(rate)
        if rewind_to is not None:
            if isinstance(rewind_to, (str, bytes)) or hasattr(rewind_to, "__fspath__"):
                self._built_for.load_weights(rewind_to)
            else:
                self._built_for.set_weights(rewind_to)
        for variable, mask in zip(self.masks, masks):
            variable.assign(mask)
        self.apply()
        return masks

    def sparsity(self) -> Dict[str, float]:
        """{variable name: fraction of zeros} over the pruned weights, plus
        ``"global"``: zeros over all of them."""
        out, zeros, total = {}, 0, 0
        for _, variable in self._targets:
            value = variable.numpy()
            out[variable.name] = float(np.mean(value == 0))
            zeros += int(np.sum(value == 0))
            total += value.size
        out["global"] = zeros / total
        return out

    @classmethod
    def masks_from_zeros(cls, model, **kwargs) -> "GlobalPruning":
        """A ``GlobalPruning`` whose masks are the model's current zeros (to
        keep a pruned model's sparsity in further training)."""
        pruning = cls(model, **kwargs)
        for (_, variable), mask in zip(pruning._targets, pruning.masks):
            mask.assign(tf.cast(tf.not_equal(variable, 0), mask.dtype))
        return pruning

    # -- stages ------------------------------------------------------------
    def _due(self, epoch: int) -> int:
        """Stages that should have been entered at the start of ``epoch``."""
        return sum(1 for first, _ in self.stages if first <= epoch)

    def on_epoch_begin(self, epoch, logs=None):
        if self.stages is None:
            return
        due, entered = self._due(int(epoch)), int(self.stage.numpy())
        if due <= entered:
            return
        rate = self.stages[due - 1][1]  # a resume may skip stages: go to the latest
        rewind_to = None
        if self.rewind is not None and entered > 0:
            rewind_to = [v.numpy() for v in self.snapshot]
        self.prune(rate, rewind_to)
        self.stage.assign(due)
        if self.rewind is not None:
            self._take_snapshot()  # this stage's start (and its best so far)
            self.best.assign(-np.inf if self.mode == "max" else np.inf)

    def on_train_batch_end(self, batch, logs=None):
        self.apply()

    def on_epoch_end(self, epoch, logs=None):
        if self.rewind != "best" or int(self.stage.numpy()) == 0:
            return
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"GlobalPruning(rewind='best'): monitor {self.monitor!r} is not in the "
                f"epoch logs {sorted(logs)}; pass validation data or another monitor=.")
        value = float(logs[self.monitor])
        if _better(self.mode, value, float(self.best.numpy())):
            self.best.assign(value)
            self._take_snapshot()

    def on_train_begin(self, logs=None):
        steps = getattr(self.model, "_steps_per_execution", None)
        if steps is not None and int(steps.numpy()) != 1:
            raise ValueError(
                f"GlobalPruning: model {self.model.name!r} runs {int(steps.numpy())} steps "
                "per execution, but masks are re-applied after every step; compile "
                "with steps_per_execution=1.")

    def get_config(self):
        """The settings without the model; ``from_config(config, model=...)``.
        A predicate ``layers`` has no config."""
        if callable(self.layers):
            raise NotImplementedError("GlobalPruning with a predicate `layers` has no "
                                      "config; pass layer names to serialize it.")
        layers = self.layers if self.layers is None or isinstance(self.layers, str) \
            else list(self.layers)
        return {"stages": self.stages, "normalize": self.normalize, "rewind": self.rewind,
                "layers": layers, "monitor": self.monitor, "mode": self.mode,
                "hold_zeros": self.hold_zeros}

    @classmethod
    def from_config(cls, config, model=None):
        return cls(model=model, **config)
