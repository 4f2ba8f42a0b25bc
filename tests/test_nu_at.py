"""NuAT's update against val-iisc/NuAT CIFAR10/NuAT_cifar10.py written out here op by op (TensorFlow autodiff
through the SVD for torch.norm(., 'nuc')), its BatchNorm moving averages against the official forward sequence,
the nuclear norm's gradient against torch, the lambda ramp against the official accumulation, and 2 replicas
under MirroredStrategy (the nuclear norm of the global batch's logits) against one device."""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf
import torch

from conftest import run_as_script
from test_official_updates import (BATCH, flat, moving_averages, real_batch, restore,  # noqa: F401
                                   tiny_model, torch_rule_moving_averages)
from tf_fastbat import methods
from tf_fastbat.methods.base import StepContext
from tf_fastbat.methods.nu_at import nuclear_norm

EPS8, EPS16 = 8 / 255, 16 / 255
SEED = 11  # the trainer's noise seed


def official_nu_at(model, x, y, u, eps, nuc_reg, alt, b_val, f_eps, smoothing=0.0):
    """The training loop body: out, NucAttack(steps=1, alt=counter % 2), the delta clamp, the NuAT loss; with
    `smoothing`, FastAT_Benchmark's nu_at.py, whose criterion CrossEntropyLoss(label_smoothing) is both CEs."""
    def nuc(matrix):
        return tf.reduce_sum(tf.linalg.svd(matrix, compute_uv=False))  # torch.norm(matrix, 'nuc')

    def cross_entropy(logits):
        k = logits.shape[-1]
        target = (1 - smoothing) * tf.one_hot(y, k) + smoothing / k
        return tf.reduce_mean(-tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=1))

    train_batch_size = x.shape[0]
    out = model(x, training=True)
    adv_data = tf.clip_by_value(x + b_val * tf.sign(0.5 - u), 0.0, 1.0)
    with tf.GradientTape() as tape:  # model.eval()
        tape.watch(adv_data)
        rout = model(adv_data, training=False)
        cost = cross_entropy(rout)
        if alt:
            cost = cost + nuc_reg * nuc(out - rout) / train_batch_size
    adv = adv_data + f_eps * tf.sign(tape.gradient(cost, adv_data))
    adv_data = tf.clip_by_value(adv, 0.0, 1.0)
    delta = tf.clip_by_value(adv_data - x, -eps, eps)
    adv_data = tf.clip_by_value(x + delta, 0.0, 1.0)
    with tf.GradientTape() as tape:  # model.train()
        adv_out = model(adv_data, training=True)
        out = model(x, training=True)
        cost = cross_entropy(out) + nuc_reg * nuc(out - adv_out) / train_batch_size
    return tape.gradient(cost, model.trainable_variables), adv_data, [x, adv_data, x]


def bernoulli_draw(seed=5):
    """u ~ U[0, 1) and the trainer's noise from the same u: U[-eps, eps] = -eps + 2 eps u."""
    u = np.random.default_rng(seed).uniform(0, 1, (BATCH, 32, 32, 3)).astype(np.float32)
    return tf.constant(u), lambda eps: tf.constant(-eps + 2 * eps * u)


def context(step, epoch_index):
    """`step` is also the step within its epoch (the official per-epoch counter the attack alternates on)."""
    return StepContext(tf.constant(step, tf.int64), tf.constant(float(epoch_index)), tf.constant(epoch_index, tf.int64),
                       None, {}, tf.constant(step, tf.int64))


CASES = {
    # name: (eps, hparams, step, epoch_index, official lambda, official alt)
    "epoch0_odd": (EPS8, {"nuc_ramp_epochs": 9.0}, 7, 0, 0.0, 1),
    "benchmark_label_smoothing": (EPS8, {"nuc_ramp_epochs": 9.0, "label_smoothing": 0.4}, 7, 3, 4.5 * 3 / 9, 1),
    "epoch3_odd_attack_nuclear": (EPS8, {"nuc_ramp_epochs": 9.0}, 7, 3, 4.5 * 3 / 9, 1),
    "epoch3_even_attack_ce": (EPS8, {"nuc_ramp_epochs": 9.0}, 8, 3, 4.5 * 3 / 9, 0),
    "ramp_done_eps16": (EPS16, {"nuc_ramp_epochs": 2.0, "nuc_max": 4.0}, 3, 5, 4.0, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_update_equals_the_official_loop(case, real_batch):
    eps, hparams, step, epoch_index, nuc_reg, alt = CASES[case]
    x, y = real_batch
    u, noise = bernoulli_draw()
    model = tiny_model()
    before = moving_averages(model)
    expected, expected_adv, forward_inputs = official_nu_at(model, x, y, u, eps, nuc_reg, alt, eps / 2, eps,
                                                            hparams.get("label_smoothing", 0.0))
    expected_averages = torch_rule_moving_averages(model, before, forward_inputs)
    restore(model, before)
    result = tf.function(methods.build("nu_at", eps=eps, **hparams).step)(model, x, y, noise(eps),
                                                                          context=context(step, epoch_index))
    np.testing.assert_allclose(result.x_adv.numpy(), expected_adv.numpy(), atol=1e-6)
    expected, got = flat(expected), flat(result.grads)
    assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected)
    for (mean, variance), (expected_mean, expected_variance) in zip(moving_averages(model), expected_averages):
        np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-6)


def test_the_cases_see_both_nuclear_terms(real_batch):
    """The comparison above would catch a missing term: the attack's nuclear norm moves x_adv, the training
    loss's moves the gradient by far more than the tolerance, and so does label smoothing."""
    x, y = real_batch
    u, _ = bernoulli_draw()
    model = tiny_model()
    averages = moving_averages(model)
    with_both, adv_nuclear, _ = official_nu_at(model, x, y, u, EPS8, 1.5, 1, EPS8 / 2, EPS8)
    restore(model, averages)
    _, adv_ce, _ = official_nu_at(model, x, y, u, EPS8, 1.5, 0, EPS8 / 2, EPS8)
    restore(model, averages)
    without, _, _ = official_nu_at(model, x, y, u, EPS8, 0.0, 0, EPS8 / 2, EPS8)
    restore(model, averages)
    smoothed, adv_smoothed, _ = official_nu_at(model, x, y, u, EPS8, 1.5, 1, EPS8 / 2, EPS8, 0.4)
    assert np.mean(adv_nuclear.numpy() != adv_ce.numpy()) > 0.01
    assert np.linalg.norm(flat(with_both) - flat(without)) > 1e-2 * np.linalg.norm(flat(without))
    assert np.mean(adv_smoothed.numpy() != adv_nuclear.numpy()) > 0.001  # the attack's smoothing is visible
    assert np.linalg.norm(flat(smoothed) - flat(with_both)) > 1e-2 * np.linalg.norm(flat(with_both))


def torch_sgd(variables, grads, buffers, lr=0.05, momentum=0.9, weight_decay=5e-4):
    """torch.optim.SGD's step in NumPy: d = g + wd p; buf = m buf + d (buf = d at the first step); p -= lr buf."""
    for index, (variable, gradient) in enumerate(zip(variables, grads)):
        d = gradient.numpy() + weight_decay * variable.numpy()
        buffers[index] = d if buffers[index] is None else momentum * buffers[index] + d
        variable.assign(variable.numpy() - lr * buffers[index])


def official_epochs(batches, epochs, alternation):
    """NuAT_cifar10.py's epoch loop on the tiny model: Nuc_reg from 0, += Nuc_max / R after each epoch (R = 1),
    `counter = 0` at each epoch's start and alt = counter % 2 (alternation "epoch"; "global": the parity of the step
    over the whole run instead), torch's SGD after each batch. Returns the model and the steps whose attack had the
    nuclear term with a nonzero weight."""
    model = tiny_model()
    buffers = [None] * len(model.trainable_variables)
    nuc_reg, iteration, nuclear_steps = 0.0, 0, []
    for _ in range(epochs):
        counter = 0
        for x, y in batches:
            noise = tf.random.stateless_uniform(x.shape, seed=[SEED, iteration], minval=-EPS8, maxval=EPS8)
            alt = (counter if alternation == "epoch" else iteration) % 2
            grads, _, _ = official_nu_at(model, x, y, 0.5 + noise, EPS8, nuc_reg, alt, EPS8 / 2, EPS8)
            torch_sgd(model.trainable_variables, grads, buffers)
            if alt and nuc_reg:
                nuclear_steps.append(iteration)
            counter, iteration = counter + 1, iteration + 1
        nuc_reg += 4.5 / 1.0
    return model, nuclear_steps


def test_attack_alternates_on_the_official_per_epoch_counter_over_odd_epochs(cifar_slice):
    """Two epochs of 3 batches through the trainer (its step context's epoch_step) equal the official loop, whose
    counter restarts every epoch: in epoch 1 the attack's nuclear term goes to its second batch (global step 4), not
    to the odd global steps 3 and 5; every weight and BatchNorm average agrees after each step. The same loop
    alternating on the global step ends measurably elsewhere, so this comparison would catch that."""
    from tf_fastbat.trainer import assemble, sgd

    x_all = tf.constant(cifar_slice["x_train"][:3 * BATCH].astype(np.float32) / 255.0)
    y_all = tf.constant(cifar_slice["y_train"][:3 * BATCH].astype(np.int32))
    batches = [(x_all[i * BATCH:(i + 1) * BATCH], y_all[i * BATCH:(i + 1) * BATCH]) for i in range(3)]
    reference, nuclear_steps = official_epochs(batches, 2, "epoch")
    mutated, mutated_steps = official_epochs(batches, 2, "global")
    assert (nuclear_steps, mutated_steps) == ([4], [3, 5])
    method = methods.build("nu_at", eps=EPS8, nuc_max=4.5, nuc_ramp_epochs=1.0)
    trainer = assemble(tiny_model(), method, sgd(0.05, 0.9, 5e-4), seed=SEED, num_examples=3 * BATCH,
                       steps_per_epoch=3)
    for _ in range(2):
        for x, y in batches:
            trainer.train_on_batch(x, y)
    assert int(trainer.optimizer.iterations.numpy()) == 6

    def relative(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    ours = np.concatenate([v.numpy().ravel() for v in trainer.classifier.weights])
    want = np.concatenate([v.numpy().ravel() for v in reference.weights])
    wrong = np.concatenate([v.numpy().ravel() for v in mutated.weights])
    for got, expected in zip(trainer.classifier.weights, reference.weights):  # float32 rounding over 6 steps with
        assert relative(got.numpy(), expected.numpy()) < 1e-4, got.path  # Eigen's kernels: up to 2e-5 measured
    assert relative(wrong, want) > 100 * max(relative(ours, want), 1e-7)


def test_nuclear_norm_and_its_gradient_equal_torch():
    matrix = np.random.default_rng(0).normal(size=(BATCH, 10))
    reference = torch.tensor(matrix, dtype=torch.float64, requires_grad=True)
    norm = torch.norm(reference, "nuc")
    norm.backward()
    value, direction = nuclear_norm(tf.constant(matrix))
    np.testing.assert_allclose(value.numpy(), norm.item(), rtol=1e-12)
    np.testing.assert_allclose(direction.numpy(), reference.grad.numpy(), atol=1e-10)


def test_lambda_follows_the_official_accumulation():
    """Nuc_reg starts at 0 and gains Nuc_max / (epochs - 10) after each epoch while epoch < epochs - 10."""
    epochs, nuc_max = 100, 4.5
    method = methods.build("nu_at")
    official, nuc_reg = [], 0.0
    for epoch in range(epochs):
        official.append(nuc_reg)
        if epoch < epochs - 10:
            nuc_reg += nuc_max / (epochs - 10)
    ours = [float(method.nuc_reg(tf.constant(e, tf.int64))) for e in range(epochs)]
    np.testing.assert_allclose(ours, official, rtol=1e-6, atol=1e-7)


def test_needs_the_step_context_with_the_epoch(real_batch):
    x, y = real_batch
    unknown_epoch = StepContext(tf.constant(3, tf.int64), tf.constant(float("nan")), tf.constant(-1, tf.int64), None,
                                {})  # what a trainer built without steps_per_epoch gives
    no_epoch_step = context(3, 1)._replace(epoch_step=None)  # a StepContext built without the step in its epoch
    for given in (None, unknown_epoch, no_epoch_step):
        with pytest.raises(ValueError, match="context"):
            methods.build("nu_at").step(tiny_model(), x, y, tf.zeros_like(x), context=given)


def distributed_runs(out: str) -> None:
    """Subprocess: 2 epochs of 2 steps (lambda 0, then 4.5; the attack's nuclear term on each epoch's second step)
    on 2 logical CPUs under MirroredStrategy and on one device, and on one device without the nuclear terms."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from test_distribution import build_classifier, training_batches
    from tf_fastbat.trainer import assemble, sgd

    results = {}
    for label, strategy, nuc_max in (("single", tf.distribute.get_strategy(), 4.5),
                                     ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), 4.5),
                                     ("no_nuclear", tf.distribute.get_strategy(), 0.0)):
        with strategy.scope():
            classifier = build_classifier("syncbn")
            method = methods.build("nu_at", eps=EPS8, nuc_max=nuc_max, nuc_ramp_epochs=1.0)
            trainer = assemble(classifier, method, sgd(0.5, 0.9, 5e-4), seed=11, num_examples=48, steps_per_epoch=2)
        weights = []
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: weights.append(
            np.concatenate([v.numpy().ravel() for v in classifier.weights])))
        trainer.fit(training_batches(), epochs=2, steps_per_epoch=2, callbacks=[record], verbose=0)
        results[label] = np.stack(weights)
    results["replicas"] = np.array(strategy.num_replicas_in_sync)
    np.savez(out, **results)


@pytest.mark.slow
def test_two_replicas_take_the_nuclear_norm_of_the_global_batch(tmp_path):
    out = str(tmp_path / "runs.npz")
    run_as_script(__file__, out)
    with np.load(out) as runs:
        scale = np.abs(runs["single"]).max()
        np.testing.assert_allclose(runs["mirrored"], runs["single"], rtol=1e-4, atol=1e-5 * scale)
        assert np.abs(runs["no_nuclear"][1:] - runs["single"][1:]).max() > 100 * 1e-5 * scale


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    distributed_runs(sys.argv[1])
