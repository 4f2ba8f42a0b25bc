"""ELLE-A against LIONS-EPFL/ELLE core/utils/train.py written out here op by op (Trainer.loss with --reg ELLE and
the onoff lambda rule of Trainer.train, its history a Python list and numpy's mean and std), over consecutive
steps so that lambda moves; its BatchNorm moving averages against the official forward sequence; its state through
a backup and restore (the restored trainer continues exactly); and 2 replicas under MirroredStrategy against one
device (a subprocess: the logical devices must exist before TensorFlow starts)."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_as_script
from test_official_updates import (BATCH, flat, moving_averages, real_batch, restore,  # noqa: F401
                                   tiny_model, torch_rule_moving_averages)

EPS8 = 8 / 255
SEED = 11
PRIOR = [2e-7, 3e-7, 2.5e-7]  # an error history before the first step, so that the first step is a spike
LAMBDA_MAX = 2e5  # large enough that the penalty moves the tiny model's gradient by far more than the tolerance


def triplet_draws(step, eps=EPS8, shape=(BATCH, 32, 32, 3)):
    """The same stateless draws as the method: U[-eps, eps] for x_a and x_b, U[0, 1) for alpha."""
    base = tf.constant([SEED, step], tf.int64)
    draw = [tf.random.stateless_uniform(s, seed=tf.random.experimental.stateless_fold_in(base, salt), minval=lo,
                                        maxval=hi)
            for s, salt, lo, hi in ((shape, 1, -eps, eps), (shape, 2, -eps, eps), (shape[:1], 3, 0.0, 1.0))]
    return draw[0], draw[1], tf.reshape(draw[2], [-1, 1, 1, 1])


def official_loss(model, x, y, noise, draws, lin_reg, eps=EPS8, attack_step=EPS8, input_noise_rate=0.0,
                  clamp=False, smoothing=0.0):
    """Trainer.loss, reg ELLE: the attack, out2, the triplet forward, lin_err, the clean metric forward; with
    `smoothing`, the training CE is FastAT_Benchmark elle.py's criterion CrossEntropyLoss(label_smoothing)."""
    a_noise, b_noise, alpha = draws
    batch = x.shape[0]
    x_adv = x + input_noise_rate * noise  # input_noise_rate * attack_eps * (2 rand - 1)
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x_adv, training=True)))
    start = x_adv
    x_adv = x_adv + attack_step * tf.sign(tape.gradient(loss, x_adv))
    if clamp:
        x_adv = tf.minimum(tf.maximum(x_adv, x - eps), x + eps)
    with tf.GradientTape() as tape:
        out2 = model(x_adv, training=True)
        target = (1 - smoothing) * tf.one_hot(y, out2.shape[-1]) + smoothing / out2.shape[-1]
        loss = tf.reduce_mean(-tf.reduce_sum(target * tf.nn.log_softmax(out2), axis=1))
        x_ab = tf.concat([x, x], axis=0) + tf.concat([a_noise, b_noise], axis=0)
        x_c = (1 - alpha) * x_ab[:batch] + alpha * x_ab[batch:]
        alpha = tf.reshape(alpha, [-1])
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.tile(y, [3]), model(tf.concat([x_ab, x_c], axis=0), training=True))
        lin_err = tf.reduce_mean(tf.square(losses[2 * batch:] - ((1 - alpha) * losses[:batch]
                                                                  + alpha * losses[batch:2 * batch])))
        loss = loss + lin_reg * lin_err
    grads = tape.gradient(loss, model.trainable_variables)
    model(x, training=True)  # preds_clean, for the accuracy metric
    return grads, lin_err.numpy().item(), [start, x_adv, tf.concat([x_ab, x_c], axis=0), x]


def official_onoff(elle_values, lin_reg, lin_err, lambda_aux, sensitivity=2.0, decay_rate=0.99):
    """Trainer.train after loss.backward(), lambda_schedule onoff."""
    if len(elle_values) > 2 and lin_err > np.mean(elle_values) + sensitivity * np.std(elle_values):
        lin_reg = lambda_aux
    else:
        lin_reg *= decay_rate
    elle_values.append(lin_err)
    return lin_reg


def seeded_state(variables, history, lam):
    """Our state for an official run whose elle_values are `history` and whose lin_reg is `lam`."""
    values = np.asarray(history, np.float64)
    for name, value in (("lambda", lam), ("count", len(values)), ("mean", values.mean()),
                        ("m2", ((values - values.mean()) ** 2).sum())):
        variables[name].assign(value)


def step_context(step, variables):
    from tf_fastbat.methods.base import StepContext

    return StepContext(tf.constant(step, tf.int64), tf.constant(0.0), tf.constant(0, tf.int64), None, variables)


def sgd_update(model, grads, lr=0.05):
    for variable, gradient in zip(model.trainable_variables, grads):
        variable.assign_sub(lr * gradient)


def test_consecutive_steps_equal_the_official_loop(real_batch):
    """Five steps, SGD between them: every gradient, lambda and the error statistics agree; lambda both jumps to
    lambda_max and decays along the way."""
    from tf_fastbat import methods
    from tf_fastbat.methods import state

    x, y = real_batch
    method = methods.build("elle_a", eps=EPS8, lin_reg=LAMBDA_MAX, seed=SEED)
    variables = state.create(method.state_spec(0, (32, 32, 3)))
    official_model, model = tiny_model(), tiny_model()
    elle_values, lin_reg = list(PRIOR), 10.0
    seeded_state(variables, elle_values, lin_reg)
    step = tf.function(method.step)
    lambdas = []
    for t in range(5):
        grads, lin_err, _ = official_loss(official_model, x, y, tf.zeros_like(x), triplet_draws(t), lin_reg)
        if t == 1:  # lambda_max: the penalty's share of the gradient is far above the tolerance
            assert lin_reg == LAMBDA_MAX
            averages = moving_averages(official_model)
            unregularized, _, _ = official_loss(official_model, x, y, tf.zeros_like(x), triplet_draws(t), 0.0)
            restore(official_model, averages)
            assert np.linalg.norm(flat(grads) - flat(unregularized)) > 1e-2 * np.linalg.norm(flat(unregularized))
        lin_reg = official_onoff(elle_values, lin_reg, lin_err, LAMBDA_MAX)
        result = step(model, x, y, tf.zeros_like(x), context=step_context(t, variables))
        expected, got = flat(grads), flat(result.grads)
        # 1e-4: float32 rounding of two op orders; Eigen's CPU kernels (the default) round differently per batch
        # shape, and lambda_max amplifies it (measured up to 7e-5 here). A wrong rule is off by > 1e-2.
        assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected), t
        np.testing.assert_allclose(variables["lambda"].numpy(), lin_reg, rtol=1e-12)
        assert variables["count"].numpy() == len(elle_values)
        np.testing.assert_allclose(variables["mean"].numpy(), np.mean(elle_values), rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(variables["m2"].numpy() / len(elle_values)), np.std(elle_values),
                                   rtol=1e-4)
        lambdas.append(lin_reg)
        sgd_update(official_model, grads)
        # Each step starts from the official weights: at lambda_max the penalty's float32 rounding (a loss
        # difference of ~1e-3 between losses of ~2) would otherwise amplify the last-bit differences of two runs.
        for ours, official in zip(model.weights, official_model.weights):
            ours.assign(official)
    assert lambdas[0] == LAMBDA_MAX and any(b == a * 0.99 for a, b in zip(lambdas, lambdas[1:])), lambdas


def test_adaptive_rule_follows_the_official_list_over_long_random_histories():
    """The rule alone on 3 x 150 heavy-tailed error sequences: lambda after every step equals the official
    list-and-numpy rule's, which compares with the earlier errors' population std, then appends. Each sequence
    opens with errors 1, 2, 3, 3.8 (x 1e-6): 3.8 is a spike (above 2 + 2 * 0.816) only for that rule, not with the
    sample std (threshold 4) nor with 3.8 already in the history (4.69); 3 after 1, 2 is none (two earlier)."""
    from tf_fastbat.methods import state
    from tf_fastbat.methods.elle import STATE, adaptive_update

    rng = np.random.default_rng(0)
    spikes = 0
    for _ in range(3):
        errors = np.concatenate([np.float32([1, 2, 3, 3.8]) * 1e-6, rng.lognormal(-12, 1.0, 150).astype(np.float32)])
        variables = state.create({name: ((), tf.float64) for name in STATE})
        update = tf.function(lambda e: adaptive_update(variables, e, 4000.0, 0.99, 2.0))
        elle_values, lin_reg = [], 0.0
        for t, error in enumerate(errors):
            lin_reg = official_onoff(elle_values, lin_reg, float(error), 4000.0)
            update(tf.constant(error))
            np.testing.assert_allclose(variables["lambda"].numpy(), lin_reg, rtol=1e-12)
            assert (t, lin_reg) != (2, 4000.0) and (t != 3 or lin_reg == 4000.0)
            spikes += lin_reg == 4000.0
    assert spikes > 5


@pytest.mark.parametrize("variant", ["elle_a", "n_fgsm_elle_a_clamped", "elle_constant", "elle_a_label_smoothing"])
def test_gradient_and_batch_norm_averages_equal_the_official_step(variant, real_batch):
    """FGSM + ELLE-A (one forward stands for the official two clean ones), the noisy start with the ball
    projection (four distinct forwards), and ELLE's fixed lambda (the scripts' 1000 at eps 8)."""
    from tf_fastbat import methods
    from tf_fastbat.methods import state

    hparams, rate, clamp, lam = {
        "elle_a": ({"lin_reg": LAMBDA_MAX}, 0.0, False, 10.0),
        "n_fgsm_elle_a_clamped": ({"lin_reg": LAMBDA_MAX, "input_noise_rate": 2.0, "clamp": True}, 2.0, True, 10.0),
        "elle_constant": ({"lambda_schedule": "constant"}, 0.0, False, 1000.0),
        "elle_a_label_smoothing": ({"lin_reg": LAMBDA_MAX, "label_smoothing": 0.4}, 0.0, False, 10.0)}[variant]
    x, y = real_batch
    noise = tf.constant(np.random.default_rng(3).uniform(-EPS8, EPS8, x.shape).astype(np.float32))
    method = methods.build("elle_a", eps=EPS8, seed=SEED, **hparams)
    variables = state.create(method.state_spec(0, (32, 32, 3)))
    if variables:
        seeded_state(variables, PRIOR, lam)
    model = tiny_model()
    before = moving_averages(model)
    grads, _, forward_inputs = official_loss(model, x, y, noise, triplet_draws(4), lam, input_noise_rate=rate,
                                             clamp=clamp, smoothing=hparams.get("label_smoothing", 0.0))
    expected_averages = torch_rule_moving_averages(model, before, forward_inputs)
    restore(model, before)
    result = tf.function(method.step)(model, x, y, noise, context=step_context(4, variables))
    expected, got = flat(grads), flat(result.grads)
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)
    np.testing.assert_allclose(result.x_adv.numpy(), forward_inputs[1].numpy(), atol=1e-6)
    for (mean, variance), (expected_mean, expected_variance) in zip(moving_averages(model), expected_averages):
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-6)


# ---- the official trainer's two optimizer steps per batch -------------------------------------------------------

def official_optimizer_loop(batches, order):
    """Trainer.train's optimizer calls with torch itself: SGD(lr 0.2, momentum 0.9, weight_decay 5e-4) under the
    'GradAlign' scheduler, CyclicLR(base_lr 0, max_lr 0.2, 3 steps up, 3 down; cycle_momentum by default), on the
    tiny model's parameters; each batch's gradient is Trainer.loss's (official_loss, lambda by the onoff rule).
    `order` lists the calls per batch: the official ("step", "scheduler", "step"); ("step", "scheduler") is one step;
    ("step", "step", "scheduler") would be both steps at the batch's own learning rate. Returns the model after each
    batch (weights and BatchNorm averages)."""
    import torch

    model = tiny_model()
    parameters = [torch.nn.Parameter(torch.tensor(v.numpy())) for v in model.trainable_variables]
    sgd = torch.optim.SGD(parameters, lr=0.2, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CyclicLR(sgd, base_lr=0.0, max_lr=0.2, step_size_up=3, step_size_down=3)
    elle_values, lin_reg, snapshots = [], 0.0, []
    for t, (x, y) in enumerate(batches):
        grads, lin_err, _ = official_loss(model, x, y, tf.zeros_like(x), triplet_draws(t), lin_reg)
        lin_reg = official_onoff(elle_values, lin_reg, lin_err, 4000.0)
        for parameter, gradient in zip(parameters, grads):
            parameter.grad = torch.tensor(gradient.numpy())  # loss.backward(); no zero_grad between the steps
        for call in order:
            sgd.step() if call == "step" else scheduler.step()
        for variable, parameter in zip(model.trainable_variables, parameters):
            variable.assign(parameter.detach().numpy())
        snapshots.append([v.numpy().copy() for v in model.weights])
    return snapshots


@pytest.mark.parametrize("steps", [2, 1])
def test_optimizer_steps_per_batch_equal_torch_in_the_official_order(steps, cifar_slice):
    """Three batches through the trainer with the cyclic schedule and cycled momentum: after every batch the weights
    (and BatchNorm averages) equal torch's SGD stepped as ELLE's Trainer.train steps it: optimizer.step(),
    scheduler.step(), optimizer.step() with the same gradient, the second step at the next learning rate and momentum
    and with the weight decay of the updated weights (steps=2, the default); one step with --elle_optimizer_steps=1.
    The other orders end measurably elsewhere (at batch 0 the learning rate is 0: only a second step at the next
    rate moves the weights)."""
    from tf_fastbat import methods, optim
    from tf_fastbat.trainer import assemble, sgd

    x_all = tf.constant(cifar_slice["x_train"][:3 * BATCH].astype(np.float32) / 255.0)
    y_all = tf.constant(cifar_slice["y_train"][:3 * BATCH].astype(np.int32))
    batches = [(x_all[i * BATCH:(i + 1) * BATCH], y_all[i * BATCH:(i + 1) * BATCH]) for i in range(3)]
    hparams = {} if steps == 2 else {"optimizer_steps_per_batch": 1}
    method = methods.build("elle_a", eps=EPS8, seed=SEED, **hparams)
    assert method.optimizer_steps_per_batch == steps
    schedule = dict(epochs=2, steps_per_epoch=3)  # CyclicLR(0, 0.2, 3 up, 3 down), as the reference's
    lr = optim.schedule("cyclic", lr_max=0.2, **schedule)
    momentum = optim.momentum_schedule("cyclic", momentum=0.9, cycle_momentum=True, base_momentum=0.8, **schedule)
    trainer = assemble(tiny_model(), method, sgd(lr, momentum, 5e-4), seed=SEED, num_examples=3 * BATCH,
                       steps_per_epoch=3)
    orders = {"official": ("step", "scheduler", "step"), "one": ("step", "scheduler"),
              "same_lr": ("step", "step", "scheduler")}
    references = {name: official_optimizer_loop(batches, order) for name, order in orders.items()}
    target = "official" if steps == 2 else "one"
    expected = references[target]
    initial = np.concatenate([v.numpy().ravel() for v in trainer.classifier.trainable_variables])

    for t, (x, y) in enumerate(batches):
        trainer.train_on_batch(x, y)
        for got, want in zip(trainer.classifier.weights, expected[t]):  # float32 precision (zeros stay zeros)
            assert np.linalg.norm(got.numpy() - want) <= 1e-5 * np.linalg.norm(want), (t, got.path)
    assert int(trainer.optimizer.iterations.numpy()) == 3  # one optimizer iteration per batch either way
    final = {name: np.concatenate([w.ravel() for w in snapshots[-1]]) for name, snapshots in references.items()}
    ours = np.concatenate([v.numpy().ravel() for v in trainer.classifier.weights])
    error = np.linalg.norm(ours - final[target])
    for name in set(orders) - {target}:
        assert np.linalg.norm(final[name] - ours) > 1e3 * max(error, 1e-9), name
    trainable = np.concatenate([v.numpy().ravel() for v in trainer.classifier.trainable_variables])
    assert np.linalg.norm(trainable - initial) > 1e-2 * np.linalg.norm(initial)


def test_optimizer_steps_per_batch_needs_torch_sgd(real_batch):
    """A Keras optimizer cannot repeat the step as torch's SGD does: the trainer says so rather than take one."""
    from tf_fastbat import methods
    from tf_fastbat.trainer import AdversarialTrainer

    trainer = AdversarialTrainer(tiny_model(), methods.build("elle_a", eps=EPS8), num_examples=BATCH,
                                 steps_per_epoch=1)
    with pytest.raises(ValueError, match="CoupledSGD"):
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    with pytest.raises(ValueError, match="optimizer_steps_per_batch"):
        methods.build("elle_a", optimizer_steps_per_batch=0)


# ---- through the trainer: backup and restore, and MirroredStrategy -----------------------------------------------

def build_trainer(classifier, lambda_max, steps_per_epoch):
    from tf_fastbat import methods
    from tf_fastbat.trainer import assemble, sgd

    method = methods.build("elle_a", eps=EPS8, lin_reg=lambda_max, seed=SEED)
    return assemble(classifier, method, sgd(0.05, 0.9, 5e-4), seed=SEED, num_examples=BATCH,
                    steps_per_epoch=steps_per_epoch)


def snapshot(trainer):
    return np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in trainer.classifier.weights]), \
        {name: float(v.numpy()) for name, v in trainer.method_state.items()}


def test_state_survives_a_backup_and_the_restored_trainer_continues_exactly(real_batch, tmp_path):
    from tf_fastbat import backup
    from tf_fastbat.resume import Position, RunState

    x, y = real_batch
    batches = [(x[i:i + 8], y[i:i + 8]) for i in (0, 8, 0, 8, 0)]

    def run_state(trainer):
        return RunState(trainer, tf.distribute.get_strategy(), str(tmp_path / "ckpt"), str(tmp_path / "log.csv"),
                        batch_size=8, steps_per_epoch=2)

    keras.backend.clear_session()
    unbroken = build_trainer(tiny_model(), LAMBDA_MAX, 2)
    seeded_state(unbroken.method_state, PRIOR, 10.0)
    for xb, yb in batches[:2]:
        unbroken.train_on_batch(xb, yb)
    source = run_state(unbroken)
    path = backup.write(str(tmp_path / "backup"), 2, source.arrays(), source.state(Position(1, 0), 0.0))
    saved = snapshot(unbroken)
    assert saved[1]["count"] == len(PRIOR) + 2 and saved[1]["lambda"] > 0

    keras.backend.clear_session()  # a fresh process's layer names, which the backup's variable paths record
    resumed = build_trainer(tiny_model(seed=1), LAMBDA_MAX, 2)
    assert snapshot(resumed)[1] != saved[1]
    run_state(resumed).restore(backup.read(path))
    np.testing.assert_array_equal(snapshot(resumed)[0], saved[0])
    assert snapshot(resumed)[1] == saved[1]
    lambdas = set()
    for xb, yb in batches[2:]:
        unbroken.train_on_batch(xb, yb)
        resumed.train_on_batch(xb, yb)
        (w_unbroken, s_unbroken), (w_resumed, s_resumed) = snapshot(unbroken), snapshot(resumed)
        np.testing.assert_array_equal(w_resumed, w_unbroken)
        assert s_resumed == s_unbroken
        lambdas.add(s_unbroken["lambda"])
    assert len(lambdas) == 3  # lambda moved at every continued step


def distributed_runs(out: str) -> None:
    """Subprocess: 4 steps of ELLE-A on 2 logical CPUs (MirroredStrategy) and on one."""
    from test_distribution import build_classifier
    from two_replicas import state_runs

    def build():
        trainer = build_trainer(build_classifier("syncbn"), 3e4, 3)
        seeded_state(trainer.method_state, PRIOR, 10.0)
        return trainer

    np.savez(out, **state_runs(build, 4))


def test_state_is_identical_across_two_replicas_and_equals_one_device(tmp_path):
    out = str(tmp_path / "runs.npz")
    run_as_script(__file__, out)
    with np.load(out) as runs:
        assert int(runs["replicas"]) == 2 and runs["mirrored/agree"].all()
        single, mirrored = ({name: runs[f"{label}/state/{name}"] for name in ("lambda", "count", "mean", "m2")}
                            for label in ("single", "mirrored"))
        assert len(set(single["lambda"])) > 1, "lambda must move in the compared steps"
        np.testing.assert_allclose(mirrored["lambda"], single["lambda"], rtol=1e-12)
        np.testing.assert_array_equal(mirrored["count"], single["count"])
        for name in ("mean", "m2"):  # float32 error sums
            np.testing.assert_allclose(mirrored[name], single[name], rtol=1e-4)
        scale = np.abs(runs["single/weights"]).max()
        np.testing.assert_allclose(runs["mirrored/weights"], runs["single/weights"], rtol=1e-4, atol=1e-5 * scale)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    distributed_runs(sys.argv[1])
