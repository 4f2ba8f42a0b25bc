"""Each method's training gradient and BatchNorm moving averages against the official loop, written out here.

The reference functions follow the official trainers operation by operation (OPTML-Group/Fast-BAT trainer.py for
Fast-BAT, Fast-AT, Fast-AT-GA, PGD-K and PGD-0; pdejorge/N-FGSM train.py for N-FGSM), independently of
tf_fastbat.methods: every training-mode forward the official loop runs is run here, in its order, and each returns
the inputs of those forwards so that the moving averages can be recomputed in NumPy with torch's BatchNorm rule.
"""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_fastbat import methods
from tf_fastbat.models.layers import batch_norm
from tf_fastbat.methods.base import standalone_context

BATCH = 16


def tiny_model(seed: int = 0) -> keras.Model:
    """Two convolutions with torch-style BatchNorm, random affine parameters and moving averages."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.Activation("relu")(batch_norm("bn1")(h))
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(h)
    h = keras.layers.Activation("softplus")(batch_norm("bn2")(h))
    logits = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, logits)
    rng = np.random.default_rng(seed)
    for layer in bn_layers(model):
        channels = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
        layer.beta.assign(rng.normal(0, 0.2, channels).astype(np.float32))
        layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, channels).astype(np.float32))
    return model


def bn_layers(model):
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.fixture(scope="module")
def real_batch(cifar_slice):
    """16 real CIFAR-10 training images, among them pixels at exactly 0 and 1, and their labels."""
    x = cifar_slice["x_train"][:BATCH].astype(np.float32) / 255.0
    assert (x == 0).any() and (x == 1).any(), "the batch must have pixels on both faces of the [0, 1] box"
    return tf.constant(x), tf.constant(cifar_slice["y_train"][:BATCH].astype(np.int32))


def uniform_noise(eps, seed=3):
    return tf.constant(np.random.default_rng(seed).uniform(-eps, eps, (BATCH, 32, 32, 3)).astype(np.float32))


# ---- the official updates, written out ------------------------------------------------------------------------

def clamp_eps_then_box(delta, x, eps):
    """delta = clamp(delta, -eps, eps); delta = clamp(x + delta, 0, 1) - x, the official two-line projection."""
    delta = tf.clip_by_value(delta, -eps, eps)
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def cross_entropy(logits, y, reduction):
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
    return tf.reduce_sum(losses) if reduction == "sum" else tf.reduce_mean(losses)


def official_fast_bat(model, x, y, noise, eps, attack_lr, lmbda):
    """trainer.py, mode fast_bat: z_init, delta, delta_star, H, delta_outer_grad, b_dot_product, cross_term."""
    variables = model.trainable_variables
    real_batch = x.shape[0]
    lmbda = 1.0 / attack_lr if lmbda == 0.0 else lmbda
    z_init = tf.clip_by_value(x + noise, 0.0, 1.0) - x
    with tf.GradientTape() as tape:
        tape.watch(z_init)
        attack_loss = -cross_entropy(model(x + z_init, training=True), y, "sum")
    delta = z_init - attack_lr * tape.gradient(attack_loss, z_init)
    delta = clamp_eps_then_box(delta, x, eps)
    with tf.GradientTape() as theta_tape:
        with tf.GradientTape() as tape:
            tape.watch(delta)
            attack_loss_second = -cross_entropy(model(x + delta, training=True), y, "sum")
        grad_second = tape.gradient(attack_loss_second, delta)  # create_graph=True: a function of theta
        delta_star = delta - attack_lr * tf.stop_gradient(grad_second)
        delta_star = tf.stop_gradient(clamp_eps_then_box(delta_star, x, eps))
        z_min = tf.maximum(-x, -eps)
        z_max = tf.minimum(1.0 - x, eps)
        h = tf.cast((delta_star > z_min + 1e-7) & (delta_star < z_max - 1e-7), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(delta_star)
            delta_star_loss = cross_entropy(model(x + delta_star, training=True), y, "sum")
        delta_outer_grad = tape.gradient(delta_star_loss, delta_star)
        b_u = tf.stop_gradient(h * (delta_outer_grad / lmbda))
        b_dot_product = tf.reduce_sum(grad_second * b_u)
    cross_term = [-g / real_batch for g in theta_tape.gradient(b_dot_product, variables)]
    with tf.GradientTape() as tape:
        train_loss = cross_entropy(model(x + delta_star, training=True), y, "sum") / real_batch
    grads = [g + c for g, c in zip(tape.gradient(train_loss, variables), cross_term)]
    return grads, [x + z_init, x + delta, x + delta_star, x + delta_star], float(tf.reduce_mean(h))


def official_pgd(model, x, y, noise, eps, attack_lr, steps):
    """trainer.py, modes fast_at and pgd: PgdAttack.perturb_iterative from the random init, then CE_sum / B."""
    variables = model.trainable_variables
    delta = tf.clip_by_value(x + noise, 0.0, 1.0) - x
    inputs = []
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(delta)
            inputs.append(x + delta)
            loss = cross_entropy(model(x + delta, training=True), y, "sum")
        delta = delta + attack_lr * tf.sign(tape.gradient(loss, delta))
        delta = clamp_eps_then_box(delta, x, eps)
    x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
    delta_star = x_adv - x
    with tf.GradientTape() as tape:
        train_loss = cross_entropy(model(x + delta_star, training=True), y, "sum") / x.shape[0]
    return tape.gradient(train_loss, variables), inputs + [x + delta_star]


def official_fast_at_ga(model, x, y, noise, eps, ga_coef):
    """trainer.py, mode fast_at_ga, and get_ga_reg / get_input_grad(delta_init='random_uniform')."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as theta_tape:
        delta = tf.zeros_like(x)
        with tf.GradientTape() as tape:
            tape.watch(delta)
            loss = cross_entropy(model(tf.clip_by_value(x + delta, 0.0, 1.0), training=True), y, "mean")
        grad = tf.stop_gradient(tape.gradient(loss, delta))
        delta = tf.clip_by_value(delta + 1.25 * eps * tf.sign(grad), -eps, eps)
        delta = tf.stop_gradient(tf.clip_by_value(x + delta, 0.0, 1.0) - x)
        train_loss = cross_entropy(model(x + delta, training=True), y, "mean")
        zero = tf.zeros_like(x)
        with tf.GradientTape() as tape:
            tape.watch(zero)
            clean_loss = cross_entropy(model(tf.clip_by_value(x + zero, 0.0, 1.0), training=True), y, "mean")
        grad_clean = tf.stop_gradient(tape.gradient(clean_loss, zero))
        with tf.GradientTape() as tape:
            tape.watch(noise)
            noisy_loss = cross_entropy(model(x + noise, training=True), y, "mean")
        grad_random_perturb = tape.gradient(noisy_loss, noise)  # create_graph=True
        nonzero = (tf.norm(tf.reshape(grad_clean, [BATCH, -1]), axis=1) != 0) & \
                  (tf.norm(tf.reshape(grad_random_perturb, [BATCH, -1]), axis=1) != 0)
        clean = tf.boolean_mask(grad_clean, nonzero)
        noisy = tf.boolean_mask(grad_random_perturb, nonzero)
        clean = clean / tf.norm(tf.reshape(clean, [tf.shape(clean)[0], -1]), axis=1)[:, None, None, None]
        noisy = noisy / tf.norm(tf.reshape(noisy, [tf.shape(noisy)[0], -1]), axis=1)[:, None, None, None]
        cos = tf.reduce_sum(clean * noisy, axis=(1, 2, 3))
        total = train_loss + ga_coef * (1.0 - tf.reduce_mean(cos))
    grads = theta_tape.gradient(total, variables)
    return grads, [x, x + delta, x, x + noise]


def official_n_fgsm(model, x, y, noise, eps):
    """pdejorge/N-FGSM train.py: eta ~ U[-2 eps, 2 eps] clamped to the box, a signed step of eps, the box."""
    variables = model.trainable_variables
    eta = tf.clip_by_value(2.0 * noise, -x, 1.0 - x)
    with tf.GradientTape() as tape:
        tape.watch(eta)
        loss = cross_entropy(model(x + eta, training=True), y, "mean")
    delta = tf.clip_by_value(eta + eps * tf.sign(tape.gradient(loss, eta)), -x, 1.0 - x)
    with tf.GradientTape() as tape:
        train_loss = cross_entropy(model(x + delta, training=True), y, "mean")
    return tape.gradient(train_loss, variables), [x + eta, x + delta]


def official_standard(model, x, y):
    """trainer.py, mode pgd with --attack_step 0: delta_star = 0."""
    with tf.GradientTape() as tape:
        train_loss = cross_entropy(model(x, training=True), y, "sum") / x.shape[0]
    return tape.gradient(train_loss, model.trainable_variables), [x]


EPS8, EPS16 = 8 / 255, 16 / 255
CASES = {
    # name: (method, hparams, official update, noise eps)
    # A small lambda makes the implicit term a tenth of the gradient, so that the comparison checks it closely.
    "fast_bat": ("fast_bat", {"eps": EPS8, "attack_lr": 1.0, "lmbda": 0.1},
                 lambda m, x, y, n: official_fast_bat(m, x, y, n, EPS8, 1.0, 0.1)[:2], EPS8),
    "fast_bat_lmbda0": ("fast_bat", {"eps": EPS8, "attack_lr": 3.0, "lmbda": 0.0},
                        lambda m, x, y, n: official_fast_bat(m, x, y, n, EPS8, 3.0, 0.0)[:2], EPS8),
    "fast_bat_default_eps16": ("fast_bat", {"eps": EPS16},
                               lambda m, x, y, n: official_fast_bat(m, x, y, n, EPS16, 2000 / 255, 10.0)[:2], EPS16),
    "fast_at": ("fast_at", {"eps": EPS8}, lambda m, x, y, n: official_pgd(m, x, y, n, EPS8, 1.25 * EPS8, 1), EPS8),
    "pgd2": ("pgd", {"eps": EPS8, "steps": 2}, lambda m, x, y, n: official_pgd(m, x, y, n, EPS8, 0.5 * EPS8, 2),
             EPS8),
    "pgd3": ("pgd", {"eps": EPS8, "steps": 3}, lambda m, x, y, n: official_pgd(m, x, y, n, EPS8, 2 / 255, 3), EPS8),
    "fast_at_ga_eps16": ("fast_at_ga", {"eps": EPS16},
                         lambda m, x, y, n: official_fast_at_ga(m, x, y, n, EPS16, 2.0), EPS16),
    "fast_at_ga_eps8": ("fast_at_ga", {"eps": EPS8},
                        lambda m, x, y, n: official_fast_at_ga(m, x, y, n, EPS8, 0.2), EPS8),
    "n_fgsm": ("n_fgsm", {"eps": EPS8}, lambda m, x, y, n: official_n_fgsm(m, x, y, n, EPS8), EPS8),
    "standard": ("standard", {"eps": EPS8}, lambda m, x, y, n: official_standard(m, x, y), EPS8),
}


def flat(grads):
    return np.concatenate([np.asarray(g).ravel() for g in grads])


def moving_averages(model):
    return [(layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy()) for layer in bn_layers(model)]


def restore(model, averages):
    for layer, (mean, variance) in zip(bn_layers(model), averages):
        layer.moving_mean.assign(mean)
        layer.moving_variance.assign(variance)


def torch_rule_moving_averages(model, before, forward_inputs):
    """torch.nn.BatchNorm2d after each forward: r <- (1 - 0.1) r + 0.1 s, s the unbiased batch variance."""
    expected = []
    for layer, (mean, variance) in zip(bn_layers(model), before):
        activations = keras.Model(model.inputs, layer.input)
        mean, variance = mean.astype(np.float64), variance.astype(np.float64)
        for inputs in forward_inputs:
            a = activations(inputs, training=True).numpy().astype(np.float64)
            mean = 0.9 * mean + 0.1 * a.mean(axis=(0, 1, 2))
            variance = 0.9 * variance + 0.1 * a.var(axis=(0, 1, 2), ddof=1)
        expected.append((mean, variance))
    return expected


@pytest.mark.parametrize("case", list(CASES))
def test_gradient_equals_the_official_update(case, real_batch):
    name, hparams, official, noise_eps = CASES[case]
    x, y = real_batch
    model = tiny_model()
    noise = uniform_noise(noise_eps)
    expected, _ = official(model, x, y, noise)
    grads, _ = methods.build(name, **hparams).gradients(model, x, y, noise)
    expected, got = flat(expected), flat(grads)
    assert np.linalg.norm(expected) > 0
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_fast_bat_case_exercises_the_implicit_term(real_batch):
    """The Fast-BAT case above is not degenerate: both interior and boundary coordinates, and the implicit term
    moves the gradient (so that a wrong cross term or mask would fail the comparison)."""
    x, y = real_batch
    model = tiny_model()
    noise = uniform_noise(EPS8)
    for attack_lr, lmbda in ((1.0, 0.1), (3.0, 1 / 3.0)):
        with_implicit, _, interior = official_fast_bat(model, x, y, noise, EPS8, attack_lr, lmbda)
        without, _, _ = official_fast_bat(model, x, y, noise, EPS8, attack_lr, 1e12)
        assert 0.05 < interior < 0.95
        assert np.linalg.norm(flat(with_implicit) - flat(without)) > 0.05 * np.linalg.norm(flat(without))


def test_fast_at_ga_noisy_point_is_not_clipped(real_batch):
    """Clipping x + eta to [0, 1] (as this project once did) moves the eps = 16 gradient far outside tolerance."""
    x, y = real_batch
    model = tiny_model()
    noise = uniform_noise(EPS16)
    unclipped, _ = official_fast_at_ga(model, x, y, noise, EPS16, 2.0)
    clipped, _ = official_fast_at_ga(model, x, y, tf.clip_by_value(x + noise, 0.0, 1.0) - x, EPS16, 2.0)
    assert np.linalg.norm(flat(clipped) - flat(unclipped)) > 1e-3 * np.linalg.norm(flat(unclipped))


@pytest.mark.parametrize("case", ["fast_bat", "fast_bat_default_eps16", "fast_at", "pgd2", "fast_at_ga_eps16",
                                  "n_fgsm", "standard"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf_function"])
def test_batch_norm_moving_averages_equal_the_official_sequence(case, graph, real_batch):
    name, hparams, official, noise_eps = CASES[case]
    x, y = real_batch
    model = tiny_model()
    noise = uniform_noise(noise_eps)
    before = moving_averages(model)
    _, forward_inputs = official(model, x, y, noise)
    expected = torch_rule_moving_averages(model, before, forward_inputs)
    restore(model, before)
    method = methods.build(name, **hparams)
    step = tf.function(method.step) if graph else method.step
    step(model, x, y, noise, standalone_context(method, model, x))
    after = moving_averages(model)
    for (mean, variance), (expected_mean, expected_variance), (old_mean, _) in zip(after, expected, before):
        assert np.abs(expected_mean - old_mean).max() > 1e-3, "the step must move the averages"
        # float32 batch means over 16,384 values carry ~1e-6 of rounding; a wrong sequence is off by ~5e-2.
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-6)


def test_duplicate_forwards_move_the_averages(real_batch):
    """Without the reweighting (one update per distinct input), Fast-BAT's averages miss the official ones."""
    x, y = real_batch
    model = tiny_model()
    noise = uniform_noise(EPS8)
    before = moving_averages(model)
    _, forward_inputs = official_fast_bat(model, x, y, noise, EPS8, 1.0, 0.1)[:2]
    official = torch_rule_moving_averages(model, before, forward_inputs)
    merged = torch_rule_moving_averages(model, before, forward_inputs[:3])
    gap = max(np.abs(o[0] - m[0]).max() for o, m in zip(official, merged))
    assert gap > 1e-3
