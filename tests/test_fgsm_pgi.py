"""FGSM-PGI (FGSM-MEP) against its official loop written out here (jiaxiaojunQAQ/FGSM-PGI FGSM_MEP.py), and the
per-example state it keeps: across two epochs (so that the prior is used), through a backup and resume, and under
MirroredStrategy on two logical CPUs (a subprocess running this file as a script) against one device.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import run_as_script

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICE = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar10_subset.npz")
EPS = 8.0 / 255.0
EPS16 = 16.0 / 255.0
ALPHA = 8.0 / 255.0  # FGSM_MEP.py's --alpha default, the same at every --epsilon
BATCH, EXAMPLES = 4, 8  # two batches per epoch


def tiny_classifier(seed: int = 0, synchronized: bool = False):
    """A convolution with the models' torch-style BatchNorm, softplus, a strided convolution and a dense head."""
    import keras

    from tf_fastbat import distribution
    from tf_fastbat.models.layers import batch_norm

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    h = keras.layers.Activation("softplus")(batch_norm("bn")(h))
    h = keras.layers.Conv2D(6, 3, strides=2, padding="same")(h)
    h = keras.layers.Activation("softplus")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, keras.layers.Dense(10)(h))
    if synchronized:
        assert distribution.synchronize_batch_norm(model) == 1
    return model


def real_images(count: int):
    """The first `count` CIFAR-10 training images of the shared slice (uint8) and their labels."""
    if not os.path.exists(SLICE):
        pytest.fail(f"missing {SLICE}: CI needs ../shared/data beside the clone")
    with np.load(SLICE) as archive:
        return archive["x_train"][:count], archive["y_train"][:count].astype(np.int32)


# ---- the official loop, written out ---------------------------------------------------------------------------

def official_loss(output, y, factor):
    """FGSM_MEP.py's LabelSmoothLoss of _label_smoothing(y, factor) (factor None: plain cross-entropy)."""
    import tensorflow as tf

    if factor is None:
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, output))
    one_hot = np.eye(10)[y.numpy()]
    target = tf.constant(one_hot * factor + (one_hot - 1.0) * ((factor - 1) / float(10 - 1)), tf.float32)
    return tf.reduce_mean(tf.reduce_sum(-target * tf.nn.log_softmax(output, axis=-1), axis=-1))


def official_step(model, x, y, all_delta, all_momentum, idx, alpha, eps, lamda, decay, factor):
    """One iteration of FGSM_MEP.py's inner loop (std = 1): returns the parameter gradients and the training input,
    and updates all_delta / all_momentum (NumPy, [N, ...]) at idx in place."""
    import tensorflow as tf

    X = x.numpy()
    delta = tf.constant(all_delta[idx])
    momentum = all_momentum[idx]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(delta)
        ori_output = model(X + delta, training=True)
        ori_loss = official_loss(ori_output, y, factor)
    x_grad = tape.gradient(ori_loss, delta).numpy()
    grad_norm = np.abs(x_grad).sum()  # torch.norm(x_grad, p=1): the whole batch
    momentum = x_grad / grad_norm + momentum * decay
    next_delta = np.maximum(np.minimum(delta.numpy() + alpha * np.sign(momentum), eps), -eps)
    next_delta = np.maximum(np.minimum(next_delta, 1 - X), 0 - X)
    new_delta = np.maximum(np.minimum(delta.numpy() + alpha * np.sign(x_grad), eps), -eps)
    new_delta = np.maximum(np.minimum(new_delta, 1 - X), 0 - X)
    with tape:
        output = model(X + new_delta, training=True)
        loss = official_loss(output, y, factor) + lamda * tf.reduce_mean(tf.square(output - ori_output))
    grads = tape.gradient(loss, model.trainable_variables)
    all_momentum[idx] = momentum
    all_delta[idx] = next_delta
    return grads, X + new_delta


def reset_delta(uniform, alpha, eps):
    """all_delta at an epoch that is a multiple of epochs_reset: clamp(alpha * sign(U[-eps, eps]), -eps, eps)."""
    return np.clip(alpha * np.sign(uniform), -eps, eps).astype(np.float32)


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


@pytest.mark.parametrize("eps,factor", [(EPS, None), (EPS, 0.6), (EPS16, None)])
def test_update_and_stored_prior_match_the_official_loop_over_two_epochs(eps, factor):
    """Four steps (two epochs of two batches): gradients, the training input, the stored perturbations and momenta,
    and (after SGD steps on both) every weight and BatchNorm moving average agree with the official loop; with the
    official label smoothing (factor 0.6: the true class gets 0.6) as torch's label_smoothing 4/9; and at eps 16/255
    with the default step, the official --alpha 8/255 (the step and the reset corners)."""
    import tensorflow as tf

    from tf_fastbat import methods
    from tf_fastbat.methods import state
    from tf_fastbat.methods.base import StepContext

    images, labels = real_images(EXAMPLES)
    x_all = images.astype(np.float32) / 255.0
    method = methods.build("fgsm_pgi", eps=eps, label_smoothing=0.0 if factor is None else 4 / 9)
    assert (method.step_size(), method.lamda, method.momentum_decay, method.epochs_reset) == (ALPHA, 10.0, 0.3, 40)
    ours, reference = tiny_classifier(), tiny_classifier()
    variables = state.create(method.state_spec(EXAMPLES, (32, 32, 3)))
    all_delta = np.zeros((EXAMPLES, 32, 32, 3), np.float32)
    all_momentum = np.zeros_like(all_delta)
    rng = np.random.default_rng(5)
    step = 0
    for epoch in range(2):
        uniform = rng.uniform(-eps, eps, all_delta.shape).astype(np.float32)
        if epoch % 40 == 0:
            all_delta, all_momentum = reset_delta(uniform, ALPHA, eps), np.zeros_like(all_delta)
        order = rng.permutation(EXAMPLES)
        for batch in range(EXAMPLES // BATCH):
            idx = order[batch * BATCH:(batch + 1) * BATCH]
            x, y = tf.constant(x_all[idx]), tf.constant(labels[idx])
            expected_grads, expected_input = official_step(reference, x, y, all_delta, all_momentum, idx, ALPHA, eps,
                                                           10.0, 0.3, factor)
            context = StepContext(tf.constant(step, tf.int64), tf.constant(step / 2, tf.float32),
                                  tf.constant(epoch, tf.int64), tf.constant(idx, tf.int64), variables)
            result = method.step(ours, x, y, tf.constant(uniform[idx]), context=context)
            np.testing.assert_allclose(result.x_adv.numpy(), expected_input, rtol=0, atol=1e-6)
            for got, want in zip(result.grads, expected_grads):
                assert relative_error(got, want) < 1e-5
            # The rows written so far this epoch (at its end: all); the others are read only after their next write.
            seen = order[:(batch + 1) * BATCH]
            assert relative_error(variables["momentum"].numpy()[seen], all_momentum[seen]) < 1e-5
            np.testing.assert_allclose(variables["delta"].numpy()[seen], all_delta[seen], rtol=0, atol=1e-6)
            for model, grads in ((ours, result.grads), (reference, expected_grads)):
                for variable, gradient in zip(model.trainable_variables, grads):
                    variable.assign_sub(0.5 * gradient)
            step += 1
    assert np.abs(all_delta).max() > 0 and np.abs(all_momentum).max() > 0
    for got, want in zip(ours.weights, reference.weights):
        assert relative_error(got.numpy(), want.numpy()) < 1e-5, got.path


def test_default_step_is_the_official_alpha_at_every_eps():
    """FGSM_MEP.py's --alpha defaults to 8 whatever --epsilon is: the step is 8/255 at eps 16/255 (and at 4/255, where
    the eps clip bounds it), and --attack_lr sets it (the update at 16/255 is checked above)."""
    from tf_fastbat import methods

    for eps in (4 / 255, EPS, EPS16):
        assert methods.build("fgsm_pgi", eps=eps).step_size() == ALPHA
    assert methods.build("fgsm_pgi", eps=EPS16, attack_lr=EPS16).step_size() == EPS16


def test_the_prior_and_the_regularizer_change_the_update():
    """The check above can see the prior (the second epoch's init differs from a fresh random one) and the MSE term
    (lamda = 0 gives other gradients)."""
    import tensorflow as tf

    from tf_fastbat import methods
    from tf_fastbat.methods import state
    from tf_fastbat.methods.base import StepContext

    images, labels = real_images(BATCH)
    x, y = tf.constant(images.astype(np.float32) / 255.0), tf.constant(labels)
    noise = tf.constant(np.random.default_rng(1).uniform(-EPS, EPS, (BATCH, 32, 32, 3)).astype(np.float32))
    model = tiny_classifier()
    grads = {}
    for lamda in (10.0, 0.0):
        method = methods.build("fgsm_pgi", eps=EPS, lamda=lamda)
        variables = state.create(method.state_spec(BATCH, (32, 32, 3)))
        context = StepContext(tf.constant(0, tf.int64), tf.constant(0.0), tf.constant(0, tf.int64),
                              tf.range(BATCH, dtype=tf.int64), variables)
        first = method.step(model, x, y, noise, context=context)
        grads[lamda] = first.grads
        stored = variables["delta"].numpy()
        later = method.step(model, x, y, noise, context=context._replace(epoch_index=tf.constant(1, tf.int64)))
        fresh = method.step(model, x, y, noise, context=context)
        assert not np.array_equal(later.x_adv.numpy(), fresh.x_adv.numpy())
        assert np.abs(stored - np.clip(EPS * np.sign(noise.numpy()), -EPS, EPS)).max() > 0.5 * EPS  # it moved
    flat = {lamda: np.concatenate([g.numpy().ravel() for g in grads[lamda]]) for lamda in grads}
    assert relative_error(flat[10.0], flat[0.0]) > 1e-3


def test_positions_ride_along_without_changing_the_stream():
    """with_index adds each example's position and changes nothing else: the same images and labels, the labels
    those at the positions, every epoch a permutation, and a stream started at batch 3 is the tail of the full one."""
    from tf_fastbat.data import pipeline

    images, labels = real_images(10)
    plain = list(pipeline.array_stream(images, labels, 4, seed=2).take(6).as_numpy_iterator())
    indexed = list(pipeline.array_stream(images, labels, 4, seed=2, with_index=True).take(6).as_numpy_iterator())
    later = list(pipeline.array_stream(images, labels, 4, seed=2, start_batch=3, with_index=True).take(3)
                 .as_numpy_iterator())
    for (x, y), (x_i, y_i, index) in zip(plain, indexed):
        assert np.array_equal(x, x_i) and np.array_equal(y, y_i) and np.array_equal(y_i, labels[index])
    for epoch in range(2):
        positions = np.concatenate([batch[2] for batch in indexed[3 * epoch:3 * epoch + 3]])
        assert sorted(positions.tolist()) == list(range(10))
    for got, want in zip(later, indexed[3:]):
        assert all(np.array_equal(a, b) for a, b in zip(got, want))


# ---- the trainer: backup and resume, MirroredStrategy ----------------------------------------------------------

def train(strategy, images, labels, steps, start=0, restore=None, synchronized=False):
    """AdversarialTrainer.fit with fgsm_pgi on the pipeline's stream (with positions) from global batch `start`,
    `steps` steps of global batch 2 * BATCH over 2 * EXAMPLES examples (epochs_reset 2: the prior and a reset both
    happen); `restore` is a backup's arrays to restore first. Returns the RunState arrays at the end."""
    from tf_fastbat import methods, resume
    from tf_fastbat.data import pipeline
    from tf_fastbat.trainer import assemble, sgd

    global_batch, spe = 2 * BATCH, 2
    with strategy.scope():
        classifier = tiny_classifier(synchronized=synchronized)
        method = methods.build("fgsm_pgi", eps=EPS, epochs_reset=2)
        trainer = assemble(classifier, method, sgd(0.1, 0.9, 5e-4), seed=3, num_examples=len(images),
                           steps_per_epoch=spe)
    run = resume.RunState(trainer, strategy, "unused", "unused", global_batch, spe)
    if restore is not None:
        for index, (_, variable) in enumerate(run.variables):
            variable.assign(restore[f"{index:05d}"])
    stream = pipeline.array_stream(images, labels, global_batch, seed=9, start_batch=start,
                                   drop_remainder=True, with_index=True)
    trainer.fit(stream, epochs=1, steps_per_epoch=steps, verbose=0)
    names = [name for name, _ in run.variables]
    assert "method/delta" in names and "method/momentum" in names
    return run.arrays(), names


def test_state_survives_a_backup_and_resume_bit_for_bit(tmp_path):
    """Five steps, a backup written and read back, a new trainer restored from it and three more steps = eight
    unbroken steps: weights, optimizer and the stored perturbations and momenta, bit for bit."""
    import tensorflow as tf

    from tf_fastbat import backup

    images, labels = real_images(2 * EXAMPLES)
    strategy = tf.distribute.get_strategy()
    unbroken, names = train(strategy, images, labels, 8)
    first, _ = train(strategy, images, labels, 5)
    found = backup.read(backup.write(str(tmp_path), 5, first, {"step": 5}))
    resumed, _ = train(strategy, images, labels, 3, start=5, restore=found.arrays)
    for index, name in enumerate(names):
        key = f"{index:05d}"
        assert np.array_equal(resumed[key], unbroken[key]), name
    delta = unbroken[f"{names.index('method/delta'):05d}"]
    assert np.abs(delta).max() > 0 and not np.array_equal(delta, first[f"{names.index('method/delta'):05d}"])


def run_mirrored(out: str) -> None:
    """Subprocess: the same training on one device and on MirroredStrategy over two logical CPUs."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    images, labels = real_images(2 * EXAMPLES)
    single, names = train(tf.distribute.get_strategy(), images, labels, 5, synchronized=True)
    mirrored_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, _ = train(mirrored_strategy, images, labels, 5, synchronized=True)
    np.savez(out, names=np.array(names), replicas=np.array(mirrored_strategy.num_replicas_in_sync),
             **{f"single/{k}": v for k, v in single.items()}, **{f"mirrored/{k}": v for k, v in mirrored.items()})


def test_mirrored_strategy_on_two_devices_keeps_one_devices_state_and_weights(tmp_path):
    """Two replicas of 4 examples each, five steps (over a reset): the stored perturbations and momenta of every
    example, the weights and the optimizer state equal one device's on the 8-example batches."""
    out = str(tmp_path / "runs.npz")
    run_as_script(__file__, "mirrored", out, timeout=600)
    with np.load(out) as archive:
        runs = {k: archive[k] for k in archive.files}
    assert int(runs["replicas"]) == 2
    for index, name in enumerate(runs["names"]):
        single, mirrored = runs[f"single/{index:05d}"], runs[f"mirrored/{index:05d}"]
        if name == "method/delta":  # sign steps of +-eps: equal, but for a sign flip on a zero-ish gradient
            assert np.mean(single != mirrored) < 1e-4 and np.abs(single).max() > 0, name
        else:
            np.testing.assert_allclose(mirrored, single, rtol=1e-4, atol=1e-5 * max(np.abs(single).max(), 1e-30),
                                       err_msg=str(name))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tf_fastbat.runtime import default_cpu_kernels

    default_cpu_kernels()
    if sys.argv[1] == "mirrored":
        run_mirrored(sys.argv[2])
