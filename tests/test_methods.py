"""Training methods against independent computations: closed forms, autodiff through delta*, brute force."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_fastbat import methods
from tf_fastbat.methods.fast_at_ga import GA_COEF_BY_EPS, default_ga_coef
from tf_fastbat.methods.fast_bat import default_attack_lr

EPS = 8.0 / 255.0


def tiny_mlp(seed=0, num_classes=3, shape=(4, 4, 3)):
    """No BatchNorm, smooth activation: the closed form of delta*(theta) is differentiable everywhere but on a null set."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape)
    h = keras.layers.Dense(12, activation="tanh")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(num_classes)(h))


def tiny_cnn(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.Activation("relu")(h)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))


def batch(shape=(6, 4, 4, 3), seed=1, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, shape).astype(np.float32)
    x[0, 0, 0, :] = [0.0, 1.0, 0.01]  # pixels where the [0, 1] box, not the eps-ball, is active
    y = rng.integers(0, classes, shape[0]).astype(np.int32)
    noise = rng.uniform(-EPS, EPS, shape).astype(np.float32)
    return tf.constant(x), tf.constant(y), tf.constant(noise)


def ce_sum(model, x, y):
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=True)))


def box(delta, x, eps):
    return tf.clip_by_value(x + tf.clip_by_value(delta, -eps, eps), 0.0, 1.0) - x


def delta_grad(model, x, y, delta):
    with tf.GradientTape() as tape:
        tape.watch(delta)
        loss = ce_sum(model, x + delta, y)
    return tape.gradient(loss, delta)


def flat(grads):
    return np.concatenate([g.numpy().ravel() for g in grads])


@pytest.mark.parametrize("attack_lr,lmbda", [(0.05, 10.0), (0.02, 3.0)])
def test_fast_bat_equals_gradient_through_closed_form_lower_level_solution(attack_lr, lmbda):
    """grad = d/dtheta CE(x + delta*(theta)), delta* = P(z + a grad CE_sum(z)), implicit part rescaled a -> 1/lambda."""
    model = tiny_mlp()
    x, y, noise = batch()
    method = methods.build("fast_bat", eps=EPS, attack_lr=attack_lr, lmbda=lmbda)
    grads, x_adv = method.gradients(model, x, y, noise)

    z0 = box(noise, x, EPS)
    z = tf.stop_gradient(box(z0 + attack_lr * delta_grad(model, x, y, z0), x, EPS))
    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(z)
            loss_z = ce_sum(model, x + z, y)
        delta_star = box(z + attack_lr * inner.gradient(loss_z, z), x, EPS)  # differentiable in theta
        full_objective = ce_sum(model, x + delta_star, y) / x.shape[0]
    total = flat(outer.gradient(full_objective, variables))
    with tf.GradientTape() as tape:
        direct_objective = ce_sum(model, x + tf.stop_gradient(delta_star), y) / x.shape[0]
    direct = flat(tape.gradient(direct_objective, variables))
    expected = direct + (total - direct) / (lmbda * attack_lr)

    interior = np.mean((np.abs(delta_star.numpy()) < EPS - 1e-6) & (x + delta_star > 1e-6) & (x + delta_star < 1 - 1e-6))
    assert 0.05 < interior < 0.95, "the case must exercise both interior and boundary coordinates"
    assert np.linalg.norm(total - direct) > 1e-3 * np.linalg.norm(direct), "implicit term must matter here"
    np.testing.assert_allclose(x_adv.numpy(), (x + delta_star).numpy(), atol=1e-6)
    np.testing.assert_allclose(flat(grads), expected, rtol=2e-4, atol=2e-6)


def test_fast_bat_lmbda_scales_only_the_implicit_term():
    """grad(lambda) = direct + c/lambda: three lambdas lie on one line in 1/lambda."""
    model = tiny_mlp(3)
    x, y, noise = batch(seed=4)
    g = {l: flat(methods.build("fast_bat", eps=EPS, attack_lr=0.05, lmbda=l).gradients(model, x, y, noise)[0])
         for l in (1.0, 2.0, 4.0)}
    np.testing.assert_allclose(g[1.0] - g[2.0], 2 * (g[2.0] - g[4.0]), rtol=1e-3, atol=1e-6)


def test_fast_bat_official_step_sizes():
    assert default_attack_lr(8 / 255) == pytest.approx(5000 / 255)
    assert default_attack_lr(4 / 255) == pytest.approx(5000 / 255)
    assert default_attack_lr(16 / 255) == pytest.approx(2000 / 255)


def test_ga_coefficients_follow_the_official_table():
    assert [default_ga_coef(e / 255) for e in range(2, 17, 2)] == [0.036, 0.063, 0.112, 0.2, 0.356, 0.632, 1.124, 2.0]
    assert set(GA_COEF_BY_EPS) == set(range(1, 17))
    # GradAlign's scripts: 0.02 * 10^(eps / 8), rounded to three decimals for eps = 1..16 (14 is listed as 1.124).
    for eps in range(1, 17):
        assert abs(default_ga_coef(eps / 255) - 0.02 * 10 ** (eps / 8)) < 1.5e-3
    assert default_ga_coef(9.5 / 255) == pytest.approx(0.02 * 10 ** (9.5 / 8))
    assert default_ga_coef(7 / 255) == 0.150 and default_ga_coef(1 / 255) == 0.027


def test_fast_at_is_fgsm_from_the_random_start():
    model = tiny_mlp(1)
    x, y, noise = batch(seed=2)
    _, x_adv = methods.build("fast_at", eps=EPS).gradients(model, x, y, noise)
    start = box(noise, x, EPS)
    expected = x + box(start + 1.25 * EPS * tf.sign(delta_grad(model, x, y, start)), x, EPS)
    np.testing.assert_allclose(x_adv.numpy(), expected.numpy(), atol=1e-7)


def test_pgd_two_steps_of_half_eps():
    model = tiny_mlp(1)
    x, y, noise = batch(seed=5)
    _, x_adv = methods.build("pgd", eps=EPS, steps=2).gradients(model, x, y, noise)
    delta = box(noise, x, EPS)
    for _ in range(2):
        delta = box(delta + 0.5 * EPS * tf.sign(delta_grad(model, x, y, delta)), x, EPS)
    np.testing.assert_allclose(x_adv.numpy(), (x + delta).numpy(), atol=1e-7)


def test_n_fgsm_uses_doubled_noise_and_clips_to_the_box_only():
    model = tiny_mlp(1)
    x, y, noise = batch(seed=6)
    _, x_adv = methods.build("n_fgsm", eps=EPS).gradients(model, x, y, noise)
    start = tf.clip_by_value(x + 2 * noise, 0, 1) - x
    expected = tf.clip_by_value(x + start + EPS * tf.sign(delta_grad(model, x, y, start)), 0, 1)
    np.testing.assert_allclose(x_adv.numpy(), expected.numpy(), atol=1e-7)
    assert np.max(np.abs(x_adv.numpy() - x.numpy())) > EPS * 1.5  # leaves the eps-ball, as the method intends


def test_fast_at_ga_gradient_equals_independent_objective():
    """FGSM from zero plus ga_coef (1 - cos(grad at x, grad at x + eta)), double backprop through the second only."""
    model = tiny_mlp(2)
    x, y, noise = batch(seed=7)
    coef = 0.5
    grads, x_adv = methods.build("fast_at_ga", eps=EPS, ga_coef=coef).gradients(model, x, y, noise)
    clean = delta_grad(model, x, y, tf.zeros_like(x))
    expected_adv = x + box(1.25 * EPS * tf.sign(clean), x, EPS)
    np.testing.assert_allclose(x_adv.numpy(), expected_adv.numpy(), atol=1e-7)
    eta = noise  # x + eta unclipped, as in both official implementations
    with tf.GradientTape() as tape:
        with tf.GradientTape() as inner:
            inner.watch(eta)
            noisy_loss = ce_sum(model, x + eta, y)
        noisy = inner.gradient(noisy_loss, eta)
        a = tf.reshape(tf.stop_gradient(clean), [6, -1])
        b = tf.reshape(noisy, [6, -1])
        cos = tf.reduce_sum(a * b, 1) / (tf.norm(a, axis=1) * tf.norm(b, axis=1))
        objective = ce_sum(model, expected_adv, y) / 6 + coef * (1 - tf.reduce_mean(cos))
    np.testing.assert_allclose(flat(grads), flat(tape.gradient(objective, model.trainable_variables)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["fast_bat", "fast_at", "fast_at_ga", "pgd", "n_fgsm", "standard"])
def test_training_inputs_stay_in_their_sets(name):
    model = tiny_cnn()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (5, 8, 8, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, 5).astype(np.int32))
    noise = tf.constant(rng.uniform(-EPS, EPS, (5, 8, 8, 3)).astype(np.float32))
    _, x_adv = methods.build(name, eps=EPS).gradients(model, x, y, noise)
    x_adv, x = x_adv.numpy(), x.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    radius = {"n_fgsm": 3 * EPS, "standard": 0.0}.get(name, EPS)
    assert np.max(np.abs(x_adv - x)) <= radius + 1e-6


@pytest.mark.parametrize("name", ["fast_bat", "fast_at", "fast_at_ga", "pgd", "n_fgsm"])
def test_update_with_injected_noise_is_deterministic(name):
    model = tiny_cnn()
    x, y, noise = batch((5, 8, 8, 3), seed=3)
    method = methods.build(name, eps=EPS)
    first, second = method.gradients(model, x, y, noise), method.gradients(model, x, y, noise)
    np.testing.assert_array_equal(flat(first[0]), flat(second[0]))
    np.testing.assert_array_equal(first[1].numpy(), second[1].numpy())


@pytest.mark.parametrize("name", ["fast_bat", "fast_at", "pgd", "n_fgsm", "standard"])
def test_a_small_step_lowers_the_batch_objective(name):
    """theta - lr * grad lowers CE at the method's own training input (recomputed at the new theta)."""
    model = tiny_mlp(5)
    x, y, noise = batch(seed=8)
    method = methods.build(name, eps=EPS)

    def objective():
        _, x_adv = method.gradients(model, x, y, noise)
        return float(ce_sum(model, x_adv, y)) / 6

    before = objective()
    grads, _ = method.gradients(model, x, y, noise)
    for variable, g in zip(model.trainable_variables, grads):
        variable.assign_sub(1e-3 * g)
    assert objective() < before


def test_build_refuses_unknown_names_and_hyperparameters():
    with pytest.raises(ValueError, match="^method='fgsm': unknown; choose one of"):
        methods.build("fgsm")
    with pytest.raises(ValueError, match="does not take lmbda"):
        methods.build("fast_at", lmbda=1.0)
    with pytest.raises(ValueError, match="^linearization='zero': choose one of"):
        methods.build("fast_bat", linearization="zero")


@pytest.mark.parametrize("linearization", ["pgd_sign", "uniform", "corner"])
def test_fast_bat_linearization_points(linearization):
    model = tiny_mlp(1)
    x, y, noise = batch(seed=9)
    method = methods.build("fast_bat", eps=EPS, linearization=linearization)
    z = method.linearization_point(model, x, y, noise).numpy()
    start = box(noise, x, EPS)
    expected = {"uniform": start,
                "corner": box(EPS * tf.sign(noise), x, EPS),
                "pgd_sign": box(start + 1.25 * EPS * tf.sign(delta_grad(model, x, y, start)), x, EPS)}[linearization]
    np.testing.assert_allclose(z, expected.numpy(), atol=1e-7)


def test_hessian_aware_fast_bat_equals_dense_interior_solve():
    """Table A4's variant: the implicit term with (lambda I - grad_dd CE(z))^-1 on the interior, solved densely here."""
    shape, lmbda = (2, 2, 2, 3), 2.0
    model = tiny_mlp(5, shape=shape[1:])
    x, y, noise = batch(shape=shape, seed=11)
    method = methods.build("fast_bat", eps=EPS, attack_lr=0.05, lmbda=lmbda, implicit_gradient="hessian_aware",
                           cg_steps=40)
    grads, x_adv = method.gradients(model, x, y, noise)

    z0 = box(noise, x, EPS)
    z = tf.stop_gradient(box(z0 + 0.05 * delta_grad(model, x, y, z0), x, EPS))
    delta_star = box(z + 0.05 * delta_grad(model, x, y, z), x, EPS)
    with tf.GradientTape() as tape:
        tape.watch(z)
        gradient_at_z = delta_grad(model, x, y, z)
    hessian = tape.jacobian(gradient_at_z, z).numpy().reshape(z.shape.num_elements(), -1)  # grad_dd CE_sum(z)
    lower, upper = np.maximum(-x, -EPS), np.minimum(1 - x, EPS)
    interior = ((delta_star > lower + 1e-6) & (delta_star < upper - 1e-6)).numpy().ravel()
    system = lmbda * np.eye(interior.sum()) - hessian[np.ix_(interior, interior)]
    assert np.linalg.eigvalsh(system).min() > 0, "the interior system must be positive definite for CG"
    g = delta_grad(model, x, y, delta_star).numpy().ravel()
    u = np.zeros_like(g)
    u[interior] = np.linalg.solve(system, g[interior])
    assert np.linalg.norm(u - np.where(interior, g, 0) / lmbda) > 0.01 * np.linalg.norm(u), "Hessian must matter"
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        cross = tf.reduce_sum(delta_grad(model, x, y, z) * tf.constant(u.reshape(z.shape), tf.float32))
    with tf.GradientTape() as direct_tape:
        direct_objective = ce_sum(model, x + delta_star, y) / shape[0]
    expected = flat(direct_tape.gradient(direct_objective, variables)) + flat(tape.gradient(cross, variables)) / shape[0]
    np.testing.assert_allclose(x_adv.numpy(), (x + delta_star).numpy(), atol=1e-6)
    np.testing.assert_allclose(flat(grads), expected, rtol=1e-3, atol=1e-5)


def test_hessian_aware_options_are_checked():
    with pytest.raises(ValueError, match="implicit_gradient"):
        methods.build("fast_bat", implicit_gradient="exact")
    with pytest.raises(ValueError, match="cg_steps"):
        methods.build("fast_bat", implicit_gradient="hessian_aware", cg_steps=0)
