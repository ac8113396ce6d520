"""Tests of mntk.regularizers (SRIP, SO, DSO, MC, apply_srip) against numpy."""
import numpy as np
import pytest
import tensorflow as tf

from mntk import regularizers as R
from mntk.compat import keras
from _marks import fast_first

# (layer factory, kernel shape) for square, tall and wide W of each layer kind.
# Conv2D (kh, kw, cin, cout) -> W (kh*kw*cin, cout); depthwise (kh, kw, C, m)
# -> (kh*kw, C*m); Dense (in, out) as is.
CASES = {
    "conv_square": (lambda: keras.layers.Conv2D(8, 1), (6, 6, 8), (8, 8)),
    "conv_tall": (lambda: keras.layers.Conv2D(6, 3), (6, 6, 4), (36, 6)),
    "conv_wide": (lambda: keras.layers.Conv2D(12, 1), (6, 6, 4), (4, 12)),
    "depthwise_square": (lambda: keras.layers.DepthwiseConv2D(3), (6, 6, 9), (9, 9)),
    "depthwise_tall": (lambda: keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 2), (9, 4)),
    "depthwise_wide": (lambda: keras.layers.DepthwiseConv2D(2), (6, 6, 8), (4, 8)),
    "dense_square": (lambda: keras.layers.Dense(8), (8,), (8, 8)),
    "dense_tall": (lambda: keras.layers.Dense(5), (20,), (20, 5)),
    "dense_wide": (lambda: keras.layers.Dense(20), (5,), (5, 20)),
}


def built_kernel(case, seed=0):
    factory, input_shape, _ = CASES[case]
    layer = factory()
    layer.build((None,) + input_shape)
    kernel = layer.depthwise_kernel if "depthwise" in case else layer.kernel
    kernel.assign(np.random.RandomState(seed).normal(0, 0.4, kernel.shape).astype("float32"))
    return layer, kernel


def np_matrix(kernel, case):
    k = np.asarray(kernel)
    if "depthwise" in case:
        return k.reshape(int(np.prod(k.shape[:-2])), k.shape[-2] * k.shape[-1])
    return k.reshape(-1, k.shape[-1])


def np_sigma(w):
    """Spectral norm of G - I, G the smaller Gram matrix, two ways."""
    gram = w.T @ w if w.shape[1] <= w.shape[0] else w @ w.T
    by_eig = np.max(np.abs(np.linalg.eigvalsh(gram - np.eye(len(gram)))))
    singular = np.linalg.svd(w, compute_uv=False)  # min(n, m) values = sqrt(eig(G))
    by_svd = np.max(np.abs(singular ** 2 - 1.0))
    np.testing.assert_allclose(by_eig, by_svd, rtol=1e-6)
    return by_eig


@pytest.mark.parametrize("case", fast_first(sorted(CASES)))
def test_srip_converged_estimate_equals_exact_sigma(case):
    _, kernel = built_kernel(case)
    w = np_matrix(kernel, case)
    assert w.shape == CASES[case][2]
    sigma = np_sigma(w.astype(np.float64))
    estimate = R.SRIP(coefficient=1.0, power_iterations=300)(kernel)  # layout from the name
    np.testing.assert_allclose(float(estimate), sigma, rtol=1e-4)
    # A plain tensor has no name to infer the layout from: give it.
    layout = "depthwise" if "depthwise" in case else "matrix"
    squared = R.SRIP(1.0, power_iterations=300, squared=True, layout=layout)(tf.constant(kernel))
    np.testing.assert_allclose(float(squared), sigma ** 2, rtol=2e-4)
    scaled = R.SRIP(coefficient=0.25, power_iterations=300)(kernel)
    np.testing.assert_allclose(float(scaled), 0.25 * sigma, rtol=1e-4)


@pytest.mark.parametrize("in_graph", [False, True])
def test_persistent_vector_tracks_sigma_with_one_iteration_per_step(in_graph):
    _, kernel = built_kernel("conv_tall", seed=3)
    sigma = np_sigma(np_matrix(kernel, "conv_tall").astype(np.float64))
    srip = R.SRIP(coefficient=1.0, power_iterations=1)

    def train_step():  # the vector advances in training steps: under a GradientTape
        with tf.GradientTape():
            return srip(kernel)

    step = tf.function(train_step) if in_graph else train_step
    first = float(step())
    for _ in range(19):
        last = float(step())
    assert abs(last - sigma) / sigma < 0.01
    # The start vector alone is a poor estimate: the persistence did the work.
    assert abs(first - sigma) / sigma > abs(last - sigma) / sigma
    assert len(srip._vectors) == 1


@pytest.mark.parametrize("in_graph", [False, True])
def test_reading_the_loss_outside_a_training_step_leaves_the_vector(in_graph):
    """Evaluation, checkpoint callbacks and users read ``model.losses`` outside
    a training step: the estimate, but the vector a resumed run restores must
    be the one training left."""
    _, kernel = built_kernel("conv_tall", seed=3)
    srip = R.SRIP(coefficient=1.0, power_iterations=1)
    with tf.GradientTape():
        trained = float(srip(kernel))
    (vector,) = [v for v in srip.variables if v.name.startswith("srip_vector")]
    before = vector.numpy().copy()
    read = tf.function(lambda: srip(kernel)) if in_graph else (lambda: srip(kernel))
    values = [float(read()) for _ in range(3)]
    np.testing.assert_array_equal(vector.numpy(), before)
    assert values[0] == values[1] == values[2] != trained
    with tf.GradientTape():
        srip(kernel)
    assert not np.array_equal(vector.numpy(), before)


@pytest.mark.parametrize("case", ["conv_tall", "depthwise_wide", "dense_square"])
def test_so_dso_mc_match_formulas(case):
    _, kernel = built_kernel(case, seed=1)
    w = np_matrix(kernel, case).astype(np.float64)
    so = np.sum((w.T @ w - np.eye(w.shape[1])) ** 2)
    dso = so + np.sum((w @ w.T - np.eye(w.shape[0])) ** 2)
    # MC (paper): largest |entry| of W^T W - I on the raw W, diagonal included.
    mc = np.max(np.abs(w.T @ w - np.eye(w.shape[1])))
    normalized = w / np.linalg.norm(w, axis=0, keepdims=True)
    cos = np.abs(normalized.T @ normalized)
    normalized_mc = np.max(cos - np.diag(np.diag(cos)))
    for cls, expected in ((R.SO, so), (R.DSO, dso), (R.MC, mc),
                          (R.NormalizedMC, normalized_mc)):
        np.testing.assert_allclose(float(cls(coefficient=0.5)(kernel)), 0.5 * expected, rtol=1e-4)


def test_mc_is_not_scale_invariant_and_normalized_mc_is():
    """The paper's MC also penalizes column norms; NormalizedMC only angles."""
    q = np.linalg.qr(np.random.RandomState(5).randn(8, 8))[0].astype("float32")
    np.testing.assert_allclose(float(R.MC(1.0)(tf.constant(q))), 0.0, atol=1e-5)
    # 2Q: W^T W - I = 3I, so the largest entry is 3 (on the diagonal).
    np.testing.assert_allclose(float(R.MC(1.0)(tf.constant(2 * q))), 3.0, rtol=1e-5)
    np.testing.assert_allclose(float(R.NormalizedMC(1.0)(tf.constant(2 * q))), 0.0, atol=1e-5)


@pytest.mark.parametrize("cls", [R.SRIP, R.SO, R.DSO, R.MC, R.NormalizedMC])
def test_gradient_flows_to_kernel(cls):
    _, kernel = built_kernel("conv_tall", seed=2)
    with tf.GradientTape() as tape:
        value = cls(coefficient=1.0)(kernel)
    grad = tape.gradient(value, kernel)
    assert grad is not None and np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


@pytest.mark.slow
def test_srip_gradient_equals_analytic_eigenvector_gradient():
    # sigma = |lambda| of M = W^T W - I with eigenvector v: d sigma / dW = 2 sign(lambda) W v v^T.
    _, kernel = built_kernel("dense_tall", seed=4)
    w = kernel.numpy().astype(np.float64)
    values, vectors = np.linalg.eigh(w.T @ w - np.eye(w.shape[1]))
    top = np.argmax(np.abs(values))
    v = vectors[:, top:top + 1]
    expected = 2.0 * np.sign(values[top]) * w @ v @ v.T
    with tf.GradientTape() as tape:
        value = R.SRIP(coefficient=1.0, power_iterations=500)(kernel)
    np.testing.assert_allclose(tape.gradient(value, kernel), expected, atol=1e-3)


def test_orthogonal_kernel_has_zero_penalty_and_finite_gradient():
    kernel = tf.Variable(np.linalg.qr(np.random.RandomState(0).randn(8, 8))[0].astype("float32"))
    for cls in (R.SRIP, R.SO, R.DSO):
        with tf.GradientTape() as tape:
            value = cls(coefficient=1.0)(kernel)
        assert float(value) < 1e-5
        assert np.all(np.isfinite(tape.gradient(value, kernel)))


@pytest.mark.parametrize("reg", [R.SRIP(0.3, power_iterations=3, squared=True), R.SO(0.2),
                                 R.DSO(0.1, layout="matrix"), R.MC(0.05),
                                 R.NormalizedMC(0.07)])
def test_get_config_round_trip(reg):
    config = keras.regularizers.serialize(reg)
    clone = keras.regularizers.deserialize(config)
    assert type(clone) is type(reg) and clone.get_config() == reg.get_config()
    kernel = tf.constant(np.random.RandomState(0).randn(3, 3, 4, 6).astype("float32"))
    np.testing.assert_allclose(float(clone(kernel)), float(reg(kernel)), rtol=1e-6)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="power_iterations"):
        R.SRIP(power_iterations=0)
    with pytest.raises(ValueError, match="layout"):
        R.SO(layout="rows")
    with pytest.raises(ValueError, match="rank >= 2"):
        R.SRIP()(tf.zeros([4]))


# -- apply_srip ----------------------------------------------------------------
def small_model(regularizer=None):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="stem", kernel_regularizer=regularizer)(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(12, 1, name="pw", kernel_regularizer=regularizer)(x)
    se = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    se = keras.layers.Conv2D(4, 1, activation="relu", name="se_reduce")(se)
    se = keras.layers.Conv2D(12, 1, activation="sigmoid", name="se_expand")(se)
    x = keras.layers.Multiply()([x, se])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def data(n=16, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 8, 8, 3).astype("float32"), rng.randint(0, 5, n)


@pytest.mark.parametrize("layers,expected", [
    ("pointwise", ["pw", "se_reduce", "se_expand"]),
    ("conv", ["stem", "dw", "pw", "se_reduce", "se_expand"]),
    ("all", ["stem", "dw", "pw", "se_reduce", "se_expand", "logits"]),
    (lambda layer: layer.name.startswith("se_"), ["se_reduce", "se_expand"]),
])
def test_apply_srip_selects_layers(layers, expected):
    assert R.apply_srip(small_model(), 1e-2, layers=layers).layer_names == expected


def test_apply_srip_errors_name_the_problem():
    inputs = keras.Input((4,))
    dense_only = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no layer .* matches layers='pointwise'.*Dense"):
        R.apply_srip(dense_only, 1e-2)
    with pytest.raises(ValueError, match="layers="):
        R.apply_srip(dense_only, 1e-2, layers="dense")
    model = small_model()
    R.apply_srip(model, 1e-2)
    with pytest.raises(ValueError, match="already has a metric named 'srip'"):
        R.apply_srip(model, 1e-2)


@pytest.mark.slow
def test_apply_srip_adds_loss_and_logged_metric():
    model = small_model()
    srip = R.apply_srip(model, 0.0, layers="conv", power_iterations=200)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    # The logged value is the unscaled sum of sigma over the selected kernels.
    expected = sum(np_sigma(np_matrix(layer.weights[0], "depthwise" if name == "dw" else "conv"))
                   for name in srip.layer_names for layer in [model.get_layer(name)])
    plain = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(plain["srip"], expected, rtol=1e-4)
    srip.coefficient.assign(0.5)
    scaled = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(scaled["loss"] - plain["loss"], 0.5 * expected, rtol=1e-3)
    history = model.fit(x, y, epochs=1, verbose=0).history
    assert "srip" in history and len(history["srip"]) == 1


def test_apply_srip_lowers_srip_during_training():
    model = small_model()
    R.apply_srip(model, 1.0, layers="pointwise")
    model.compile(keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(*data(), epochs=6, batch_size=16, verbose=0).history
    assert history["srip"][-1] < 0.8 * history["srip"][0]


@pytest.mark.slow
def test_mean_reduction_divides_by_layer_count():
    model = small_model()
    summed = R.apply_srip(model, 1.0, power_iterations=300, name="srip_sum")
    mean = R.apply_srip(model, 1.0, power_iterations=300, reduction="mean", name="srip_mean")
    losses = [float(loss) for loss in model.losses]
    np.testing.assert_allclose(losses[1], losses[0] / len(summed.layer_names), rtol=1e-4)
    assert mean.layer_names == summed.layer_names


@pytest.mark.slow
@pytest.mark.parametrize("wrap", ["prune", pytest.param("quantize", marks=pytest.mark.slow)])
def test_apply_srip_reaches_latent_kernels_in_tfmot_wrappers(wrap):
    import tensorflow_model_optimization as tfmot
    inputs = keras.Input((8, 8, 3))  # tfmot's default QAT has no Multiply (SE): none here
    x = keras.layers.Conv2D(8, 3, name="stem")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Conv2D(12, 1, name="pw")(x)
    x = keras.layers.Conv2D(6, 1, name="pw2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    base = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    if wrap == "prune":
        model = tfmot.sparsity.keras.prune_low_magnitude(base)
    else:
        model = tfmot.quantization.keras.quantize_model(base)
    model(data(2)[0])  # a call swaps the QAT kernel attribute for a fake-quantized tensor
    srip = R.apply_srip(model, 1.0, layers="pointwise", power_iterations=200)
    assert srip.layer_names == [f"{'prune_low_magnitude' if wrap == 'prune' else 'quant'}_{n}"
                                for n in ("pw", "pw2")]
    latent = [v for v in model.trainable_variables if v.name.endswith("pw/kernel:0")]
    assert len(latent) == 1 and isinstance(latent[0], tf.Variable)
    with tf.GradientTape() as tape:
        total = tf.add_n(model.losses)
    grad = tape.gradient(total, latent[0])
    assert grad is not None and np.abs(grad).max() > 0
    expected = sum(np_sigma(np_matrix(v, "conv")) for v in model.trainable_variables
                   if v.name.split("/")[-2] in ("pw", "pw2")
                   and v.name.endswith("kernel:0"))
    np.testing.assert_allclose(float(total), expected, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["kernel_regularizer", "apply_srip"])
def test_mirrored_strategy_matches_one_replica(mode):
    x, y = data(8)
    histories = []
    for strategy in (tf.distribute.get_strategy(),
                     tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])):
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = small_model(R.SRIP(0.5) if mode == "kernel_regularizer" else None)
            if mode == "apply_srip":
                R.apply_srip(model, 0.5, layers="all")
            model.compile(keras.optimizers.SGD(0.1),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        histories.append(model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0).history)
    assert histories[1]["loss"][0] > 0
    for key in histories[0]:
        np.testing.assert_allclose(histories[1][key], histories[0][key], rtol=1e-5)


@pytest.mark.slow
def test_model_with_srip_kernel_regularizer_saves_and_loads(tmp_path):
    model = small_model(R.SRIP(0.1, power_iterations=100))
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    before = model.evaluate(x, y, verbose=0)
    model.save(tmp_path / "srip.keras")
    loaded = keras.models.load_model(tmp_path / "srip.keras")
    assert isinstance(loaded.get_layer("pw").kernel_regularizer, R.SRIP)
    assert loaded.get_layer("pw").kernel_regularizer.get_config() == R.SRIP(
        0.1, power_iterations=100).get_config()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), before, rtol=1e-5)


def test_orthogonality_regularizers_finds_layer_and_attached():
    shared = R.SRIP(0.1)
    model = small_model(shared)
    attached = R.apply_srip(model, 0.2, layers=lambda layer: layer.name == "logits")
    found = R.orthogonality_regularizers(model)
    assert found == [shared, attached]


@pytest.mark.slow
def test_apply_srip_model_saves_and_loads_without_the_attachment(tmp_path):
    model = small_model()
    R.apply_srip(model, 0.1)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = data()
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "attached.keras")
    loaded = keras.models.load_model(tmp_path / "attached.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert len(model.losses) == 1 and loaded.losses == []  # documented: re-attach after loading
