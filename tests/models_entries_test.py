"""The entries' own networks: structural counts from their architecture tables
(computed here, not read from the models), and the layers they need.

References: ENTRIES.md (../shared) and the entries' repositories: KAIST
Models/MicroNet.py, OSI-AI README table (fb0163a) and models/utils.py, the
TTQ code's training log (``Total param=269760`` for ResNet-20).
"""
import numpy as np
import pytest

import mntk
import mntk.models as mm
from mntk.global_pruning import global_masks
from mntk.compat import keras

# --------------------------------------------------------------------------
# architecture arithmetic (weights + biases, BN not counted)


def kaist_table_count(classes=100):
    """KAIST ver1 (Models/MicroNet.py:125-133, :59-98): (expansion, out, repeats, stride) rows, expanded width
    int(e * in), SE on the output (int(0.25 out), both convs with bias),
    1x1 projection where a stride-1 block changes width, FC with bias."""
    rows = [(3, 16, 2, 1), (3, 32, 1, 2), (3, 32, 1, 1), (3, 48, 3, 1), (3, 72, 1, 2),
            (3, 72, 4, 1), (3, 80, 1, 2), (3, 88, 2, 1), (3, 106, 1, 1)]
    total, cin, projections = 3 * 3 * 3 * 32, 32, 0
    for e, out, repeats, stride in rows:
        for j in range(repeats):
            s = stride if j == 0 else 1
            planes = int(e * cin)
            sq = int(out * 0.25)
            total += cin * planes + 9 * planes + planes * out
            total += out * sq + sq + sq * out + out
            if s == 1 and cin != out:
                total += cin * out
                projections += 1
            cin = out
    return total + cin * classes + classes, projections


# OSI-AI README (fb0163a) "Parameter Storage" column per operator; block 9
# reads 104,456 there, a typo for 104,656 (the total 470,776 needs it).
OSI_README_ROWS = {"stem": 648, "block0": 820, "block1": 5379, "block2": 11812,
                   "block3": 25448, "block4": 27368, "block5": 40329, "block6": 62220,
                   "block7": 68364, "block8": 96976, "block9": 104656, "head": 13056,
                   "logits": 13700}


def osi_block_count(cin, out, expansion, se_ratio=0.2):
    hidden = cin * expansion
    sq = max(1, int(cin * se_ratio))
    expand = cin * hidden if expansion != 1 else 0
    return expand + 9 * hidden + (hidden * sq + sq) + (sq * hidden + hidden) + hidden * out


def osi_table_counts():
    # widths after the 0.9 multiplier (ENTRIES.md), expansion, all 3x3
    widths = [(24, 16, 1), (16, 24, 6), (24, 40, 6), (40, 40, 6), (40, 48, 6), (48, 64, 6),
              (64, 64, 6), (64, 80, 6), (80, 80, 6), (80, 96, 6)]
    rows = {"stem": 3 * 3 * 3 * 24}
    for i, (cin, out, e) in enumerate(widths):
        rows[f"block{i}"] = osi_block_count(cin, out, e)
    rows["head"] = 96 * 136
    rows["logits"] = 136 * 100 + 100
    return rows


def preact_resnet_trainable(depth, classes=10):
    """Conv kernels + BN gamma/beta + FC of the TTQ code's ResNet (no biases in
    convs); per unit BN1 on the input (not in the first unit), BN2 on conv1."""
    n = (depth - 2) // 6
    total, cin = 3 * 3 * 3 * 16 + 2 * 16, 16
    for s, width in enumerate((16, 32, 64)):
        for u in range(n):
            if not (s == 0 and u == 0):
                total += 2 * cin
            total += 9 * cin * width + 2 * width + 9 * width * width
            cin = width
    return total + 2 * 64 + 64 * classes + classes


def _non_bn_by_prefix(model, prefixes):
    counts = dict.fromkeys(prefixes, 0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) or not layer.weights:
            continue
        prefix = next(p for p in prefixes if layer.name == p or layer.name.startswith(p + "_"))
        counts[prefix] += sum(int(np.prod(w.shape)) for w in layer.weights)
    return counts


@pytest.fixture(scope="module")
def kaist():
    return mm.get("kaist_micronet")


@pytest.fixture(scope="module")
def osi():
    return mm.get("osi_efficientnet")


@pytest.mark.slow
def test_kaist_weights_and_biases(kaist):
    expected, projections = kaist_table_count()
    assert expected == 451_758          # ENTRIES.md: the entry's count
    assert projections == 4             # 32->16, 32->48, 80->88, 88->106
    non_bn = sum(int(np.prod(w.shape)) for l in kaist.layers
                 if not isinstance(l, keras.layers.BatchNormalization) for w in l.weights)
    assert non_bn == expected
    assert len([l for l in kaist.layers if l.name.endswith("_shortcut_conv")]) == 4
    # SE on the block output, a real sigmoid; stride-2 blocks keep (and drop) their gate
    se_expand = kaist.get_layer("block4c_se_expand")
    assert se_expand.filters == 48 and se_expand.kernel.shape[2] == 12
    assert kaist.get_layer("block4c_se_sigmoid").activation.__name__ == "sigmoid"
    assert isinstance(kaist.get_layer("block2_out"), mm.KeepBranch)
    assert kaist.output_shape == (None, 100)


@pytest.mark.slow
def test_kaist_init_and_bn_match_the_entry(kaist):
    assert kaist.get_layer("stem_bn").momentum == pytest.approx(0.99)
    assert kaist.get_layer("dropout").rate == pytest.approx(0.3)
    kernel = kaist.get_layer("block6a_expand_conv").kernel.numpy()   # 1x1, 216 outputs
    assert np.std(kernel) == pytest.approx(np.sqrt(2 / 216), rel=0.05)
    fc = kaist.get_layer("logits").kernel.numpy()
    assert np.std(fc) == pytest.approx(0.01, rel=0.05)


@pytest.mark.slow
def test_osi_counts_match_the_entry_table(osi):
    rows = osi_table_counts()
    assert rows == OSI_README_ROWS
    assert sum(rows.values()) == 470_776
    assert _non_bn_by_prefix(osi, list(rows)) == rows
    shapes = {f"block{i}": osi.get_layer(f"block{i}_out").output_shape[1:] for i in range(10)}
    assert shapes["block1"] == (31, 31, 24)
    assert shapes["block4"] == (15, 15, 48)    # the exit's input
    assert shapes["block9"] == (7, 7, 96)
    ghost = [l for l in osi.layers if isinstance(l, mm.GhostBatchNormalization)]
    assert ghost and all(l.num_splits == 4 for l in ghost)
    assert all(isinstance(l, mm.GhostBatchNormalization) for l in osi.layers
               if isinstance(l, keras.layers.BatchNormalization))


@pytest.mark.slow
def test_osi_exit_head_count(osi):
    multi = mntk.early_exit.add_exits(osi, at="block4_out", head=mm.osi_exit_head())
    head = [l for l in multi.layers if l.name.startswith("exit_0")
            and not isinstance(l, keras.layers.BatchNormalization)]
    count = sum(int(np.prod(w.shape)) for l in head for w in l.weights)
    assert count == 9 * 48 + 48 * 136 + 136 * 100 + 100 == 20_660


@pytest.mark.slow
def test_osi_mults_match_the_entry_table(osi):
    """The README's MULTI column totals 60,456,692 (16-bit freebie aside)."""
    report = mntk.cost.estimate(osi, task="cifar100")
    assert report.raw_mults == pytest.approx(60_456_692, abs=0.5)


@pytest.mark.parametrize("depth", [20, pytest.param(32, marks=pytest.mark.slow),
                                   pytest.param(56, marks=pytest.mark.slow)])
def test_preact_resnet_counts(depth):
    model = mm.get(f"preact_resnet{depth}")
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == preact_resnet_trainable(depth)
    if depth == 20:
        # the TTQ log: Total param=269760, with Wp and Wn on the 19 ternarized layers
        assert preact_resnet_trainable(20) + 2 * 19 == 269_760
    pads = [l for l in model.layers if isinstance(l, mm.ChannelPad)]
    assert [(p.before, p.after) for p in pads] == [(8, 8), (16, 16)]
    assert not any(isinstance(l, keras.layers.Conv2D) and l.kernel_size == (1, 1)
                   for l in model.layers)


# --------------------------------------------------------------------------
# the layers


def test_ghost_batchnorm_training_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(10, 3, 3, 4)).astype(np.float32)
    layer = mm.GhostBatchNormalization(num_splits=4, momentum=0.9, epsilon=1e-5)
    layer.build(x.shape)
    layer.gamma.assign(np.array([1.0, 2.0, 0.5, 1.5], np.float32))
    layer.beta.assign(np.array([0.0, 1.0, -1.0, 0.5], np.float32))
    y = layer(x, training=True).numpy()
    # 10 examples in 4 parts: floor(i * 4 / 10) -> sizes 3, 2, 3, 2
    part = (np.arange(10) * 4) // 10
    ref = np.empty_like(x)
    means, variances = [], []
    for j in range(4):
        chunk = x[part == j]
        m, v = chunk.mean(axis=(0, 1, 2)), chunk.var(axis=(0, 1, 2))
        means.append(m)
        variances.append(v)
        ref[part == j] = (chunk - m) / np.sqrt(v + 1e-5) * layer.gamma.numpy() + layer.beta.numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * np.mean(means, axis=0),
                               rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 + 0.1 * np.mean(variances, axis=0), rtol=1e-5)
    # inference: the moving statistics, like a plain BN
    inf = layer(x, training=False).numpy()
    ref_inf = ((x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-5)
               * layer.gamma.numpy() + layer.beta.numpy())
    np.testing.assert_allclose(inf, ref_inf, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_ghost_batchnorm_round_trip_and_fit(tmp_path):
    inputs = keras.Input((4, 4, 2))
    x = keras.layers.Conv2D(3, 1)(inputs)
    x = mm.GhostBatchNormalization(num_splits=4, name="gbn")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.compile("sgd", "mse")
    data = np.random.default_rng(1).normal(size=(16, 4, 4, 2)).astype(np.float32)
    model.fit(data, np.zeros((16, 3)), batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "gbn.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("gbn").num_splits == 4
    np.testing.assert_allclose(loaded.predict(data, verbose=0),
                               model.predict(data, verbose=0), rtol=1e-5, atol=1e-6)


def test_ghost_batchnorm_rejects_bad_splits():
    with pytest.raises(ValueError, match="num_splits"):
        mm.GhostBatchNormalization(num_splits=0, name="g")


def test_nearest_upsample_is_torchs_floor_rule():
    x = np.arange(2 * 5 * 4 * 1, dtype=np.float32).reshape(2, 5, 4, 1)
    y = mm.NearestUpsample((9, 7))(x).numpy()
    rows = np.floor(np.arange(9) * 5 / 9).astype(int)
    cols = np.floor(np.arange(7) * 4 / 7).astype(int)
    np.testing.assert_array_equal(y, x[:, rows][:, :, cols])
    layer = mm.NearestUpsample.from_config(mm.NearestUpsample(63, name="u").get_config())
    assert layer.size == (63, 63)


def test_channel_pad_and_keep_branch():
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype(np.float32)
    y = mm.ChannelPad(2, 3)(x).numpy()
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (0, 0), (0, 0), (2, 3)]))
    assert mm.ChannelPad.from_config(mm.ChannelPad(2, 3).get_config()).after == 3
    np.testing.assert_array_equal(mm.KeepBranch()([x, x[:, :1, :1]]).numpy(), x)
    with pytest.raises(ValueError, match="non-negative"):
        mm.ChannelPad(-1, 0)


def test_entry_layers_cost_nothing():
    inputs = keras.Input((4, 4, 2))
    up = mm.NearestUpsample(8)(inputs)
    pad = mm.ChannelPad(1, 1)(up)
    out = mm.KeepBranch()([pad, keras.layers.GlobalAveragePooling2D(keepdims=True)(pad)])
    report = mntk.cost.estimate(keras.Model(inputs, out))
    # only the pooling of the kept branch: 4 mults, (64 - 1) * 4 adds
    assert report.raw_mults == 4 and report.raw_adds == 63 * 4


# --------------------------------------------------------------------------
# published counts: the networks pruned to the entries' rates and counted the
# entries' way reproduce their published figures.

# Nonzero weights per tensor of KAIST's submitted checkpoint
# (Checkpoint_ver1/micronet_v1_pr_60.t7 @9f71fb7), in the code's parameter
# order: stem, then per block expand, depthwise, project, [shortcut], SE
# reduce, SE expand; then the classifier. 180,182 of 450,456 (60.0%).
KAIST_CHECKPOINT_NONZEROS = [
    712, 949, 671, 653, 267, 44, 51, 335, 373, 361, 42, 44, 238, 420, 896, 202, 197, 1334,
    645, 1477, 160, 153, 1309, 640, 1990, 801, 346, 331, 2395, 1007, 2717, 345, 302, 2363,
    1000, 2707, 340, 341, 2308, 1281, 4830, 858, 808, 4589, 1363, 5500, 738, 610, 4674,
    1390, 5662, 772, 644, 4852, 1409, 5537, 750, 687, 4907, 1460, 5664, 720, 649, 5522,
    1897, 7081, 1047, 936, 5504, 1271, 7045, 3487, 1003, 859, 5814, 1469, 6869, 985, 834,
    6563, 1709, 11031, 4317, 1638, 1480, 10001]


def _kernel(layer):
    return (layer.depthwise_kernel if isinstance(layer, keras.layers.DepthwiseConv2D)
            else layer.kernel)


def _prunable(model):
    """Every kernel of rank >= 2 (conv, depthwise, SE, shortcut, dense): what
    both entries' global pruning ranks."""
    return [l for l in model.layers
            if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                              keras.layers.Dense))]


def _prune_globally(model, rate, normalize=None):
    layers = _prunable(model)
    arrays = [_kernel(l).numpy() for l in layers]
    for layer, a, m in zip(layers, arrays, global_masks(arrays, rate, normalize)):
        _kernel(layer).assign(a * m)


def _kaist_count(model):
    """KAIST's own count (``conventions="kaist"``): Counting/count_hooks.py and
    the notebook's ``micro_score`` (16-bit params and mults, adds at 32, a
    1-bit mask over every weight of rank >= 2, one bias per conv output
    channel, h-swish 4 mults + 1 add, sigmoid 2 + 1, residual adds and SE
    scales not counted)."""
    report = mntk.cost.estimate(model, task="cifar100", freebie=True, conventions="kaist")
    return report.params, report.ops


@pytest.mark.slow
def test_kaist_checkpoint_sparsity_reproduces_the_notebook(kaist):
    """Each tensor pruned (at random positions) to the submitted checkpoint's
    nonzero count: the notebook's 108,108.75 params and 26,052,109 ops."""
    model = keras.models.clone_model(kaist)
    order = ["stem_conv"]
    names = {l.name for l in model.layers}
    for layer in model.layers:
        if layer.name.endswith("_expand_conv"):
            b = layer.name[:-len("_expand_conv")]
            order += [f"{b}_expand_conv", f"{b}_dw", f"{b}_project_conv"]
            order += [f"{b}_shortcut_conv"] if f"{b}_shortcut_conv" in names else []
            order += [f"{b}_se_reduce", f"{b}_se_expand"]
    order.append("logits")
    assert len(order) == len(KAIST_CHECKPOINT_NONZEROS)
    rng = np.random.default_rng(0)
    for name, nonzeros in zip(order, KAIST_CHECKPOINT_NONZEROS):
        kernel = _kernel(model.get_layer(name))
        mask = np.zeros(kernel.shape.num_elements(), np.float32)
        mask[rng.choice(mask.size, nonzeros, replace=False)] = 1
        kernel.assign(rng.normal(size=kernel.shape).astype(np.float32)
                      * mask.reshape(kernel.shape))
    params, ops = _kaist_count(model)
    assert params == pytest.approx(108_108.75, rel=1e-3)
    assert ops == pytest.approx(26_052_109, rel=1e-3)
    assert params / 36.5e6 + ops / 10.49e9 == pytest.approx(0.0054454, rel=1e-3)


@pytest.mark.slow
def test_kaist_global_pruning_of_random_weights(kaist):
    """Global magnitude pruning of the entry's random init to 60% gives the
    published parameter count exactly (it only depends on the total nonzeros).
    Ops depend on which layers lose weights: the random init's per-layer rates
    give 27.67M, i.i.d. weights 25.02M, the trained checkpoint 26.05M (see the
    test above), so ops are only checked to within 7%."""
    model = keras.models.clone_model(kaist)
    _prune_globally(model, 0.6)
    params, ops = _kaist_count(model)
    assert params == pytest.approx(108_108.75, rel=1e-3)
    assert ops == pytest.approx(26_052_109, rel=0.07)


@pytest.mark.slow
def test_osi_published_score_with_exit(osi):
    """64% global sparsity, dense exit head at block 4 taking 32.17% of the
    images, official rules at 16 bits (the freebie): 0.005977 (README fb0163a,
    params 0.003119 + ops 0.002858). The entry's counter spreads the sparsity
    evenly over the layers; global pruning of i.i.d. weights does the same in
    expectation. (Its L2-normalized variant, which the entry trained with,
    prunes big layers harder and would count 0.0067 ops-heavier here.)"""
    model = keras.models.clone_model(osi)
    rng = np.random.default_rng(0)
    for layer in _prunable(model):
        kernel = _kernel(layer)
        kernel.assign(rng.normal(size=kernel.shape).astype(np.float32))
    _prune_globally(model, 0.64)
    multi = mntk.early_exit.add_exits(model, at="block4_out", head=mm.osi_exit_head())
    report = mntk.cost.estimate(multi, task="cifar100", freebie=True,
                                exit_rates=[0.3217, 1 - 0.3217])
    assert report.params / 36.5e6 == pytest.approx(0.003119, rel=1e-3)
    assert report.score == pytest.approx(0.005977, rel=0.01)
    plain = mntk.cost.estimate(model, task="cifar100", freebie=True)
    assert plain.params / 36.5e6 == pytest.approx(0.002833, rel=1e-3)
    assert plain.score == pytest.approx(0.006100, rel=0.01)
    # the last step (stage prune_exits): the exit head pruned to 50% by the
    # recipe's global rule on l2-normalized |w| over the head's kernels, the
    # backbone's zeros held, 29.29% exiting: 0.005798 (README fb0163a)
    heads = mntk.early_exit.exit_head_layers(multi)
    backbone_zeros = sum(int(np.sum(_kernel(l).numpy() == 0)) for l in _prunable(model))
    gp = mntk.global_pruning.GlobalPruning(multi, layers=heads, hold_zeros=True,
                                           normalize="l2")
    gp.prune(0.5)
    assert gp.sparsity()["global"] == pytest.approx(0.5, abs=1e-3)
    assert sum(int(np.sum(_kernel(multi.get_layer(l.name)).numpy() == 0))
               for l in _prunable(model)) == backbone_zeros
    final = mntk.cost.estimate(multi, task="cifar100", freebie=True,
                               exit_rates=[0.2929, 1 - 0.2929])
    assert final.score == pytest.approx(0.005798, rel=0.01)


@pytest.mark.slow
def test_preact_resnet_ternarized_with_its_fc_exports_int8(tmp_path):
    """The TTQ code ternarizes every kernel but the first conv, the FC included;
    the option-A pad passes its input's quantization through."""
    model = mm.resnet_preact(8, num_classes=10, input_shape=(16, 16, 3))
    x = np.random.default_rng(3).uniform(size=(8, 16, 16, 3)).astype(np.float32)
    q = mntk.quantization.quantize(model, scheme=mntk.quantization.TernaryScheme(),
                                   skip=["stem_conv"])
    report = mntk.cost.estimate(q)
    kinds = {row.layer: row.kind for row in report.layers}
    fc = [k for name, k in kinds.items() if "logits" in name]
    stem = [k for name, k in kinds.items() if "stem_conv" in name]
    assert fc and all(k.endswith(":ternary") for k in fc), kinds
    assert stem and not any(k.endswith(":ternary") for k in stem), kinds
    result = mntk.export.to_tflite(q, str(tmp_path / "q.tflite"), quantize="int8",
                                   representative_data=x)
    parity = mntk.export.verify(result.path, q, (x, np.zeros(8, np.int64)))
    assert parity.outputs[0].agreement == 1.0
