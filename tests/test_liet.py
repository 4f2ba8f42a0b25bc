"""LIET against fzjcdt/LIET main.py written out here op by op (the label-indicative perturbation at the gray image,
CustomCrossEntropyLoss's random label smoothing, the masked start, the PGD-1 refinement, the JS consistency term
and lambda's per-epoch ramp), over consecutive steps across an epoch boundary so that the stored perturbation is
both reused and recomputed; its BatchNorm moving averages against the official forward sequence; its state through
a backup and restore; and 2 replicas under MirroredStrategy against one device (a subprocess)."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run_as_script
from test_official_updates import (BATCH, flat, moving_averages, real_batch, restore,  # noqa: F401
                                   tiny_model, torch_rule_moving_averages)

SEED = 5
CLASSES = 10
# (eps, the official config's ls, lambda, mask ratio range): cifar10 and cifar10-eps16 of configs/configs.yaml
SETTINGS = {8: (8 / 255, 0.6, 100.0, (0.1, 0.5)), 16: (16 / 255, 0.4, 20.0, (0.0, 1.0))}


def seed_of(step, salt):
    return tf.random.experimental.stateless_fold_in(tf.constant([SEED, step], tf.int64), salt)


def draws(step, shape=(BATCH, 32, 32, 3), classes=CLASSES):
    """The step's U[0, 1) draws as the method seeds them: the LI criterion's, the mask's, the two scalars
    (mask ratio, coin), the attack criterion's and the training criterion's."""
    return {"li": tf.random.stateless_uniform([classes, classes], seed_of(step, 1)),
            "mask": tf.random.stateless_uniform(shape, seed_of(step, 2)),
            "scalars": tf.random.stateless_uniform([2], seed_of(step, 3)).numpy(),
            "attack": tf.random.stateless_uniform([shape[0], classes], seed_of(step, 4)),
            "training": tf.random.stateless_uniform([shape[0], classes], seed_of(step, 5))}


def custom_cross_entropy(logits, target, label_smoothing, rand):
    """utils/custom_loss.py CustomCrossEntropyLoss, reduction mean, torch.rand_like replaced by `rand`."""
    smooth = tf.tensor_scatter_nd_update(tf.zeros_like(logits), tf.stack([tf.range(len(target)), target], 1),
                                         tf.ones([len(target)]))
    if label_smoothing > 0:
        smooth = smooth * (1 - label_smoothing)
        rand_labels = rand * label_smoothing
        rand_labels = tf.where(tf.cast(smooth, tf.bool), 0.0, rand_labels)
        rand_labels = rand_labels / tf.reduce_sum(rand_labels, axis=1, keepdims=True) * label_smoothing
        smooth = smooth + rand_labels
    return tf.reduce_mean(tf.reduce_sum(-smooth * tf.nn.log_softmax(logits, axis=-1), axis=-1))


def kl_div_batchmean(inputs, target):
    """F.kl_div(input, target, reduction='batchmean'): target (log target - input), 0 where target is 0."""
    pointwise = tf.where(target > 0, target * tf.math.log(tf.where(target > 0, target, 1.0)), 0.0) - target * inputs
    return tf.reduce_sum(pointwise) / inputs.shape[0]


def official_li(model, rand, eps, ls):
    """The `idx % li_update == 0` block: model.eval(), gray constant input, criterion over sequential labels."""
    constant_input = tf.fill([CLASSES, 32, 32, 3], 0.5)
    with tf.GradientTape() as tape:
        tape.watch(constant_input)
        loss = custom_cross_entropy(model(constant_input, training=False), tf.range(CLASSES), ls, rand)
    return eps * tf.sign(tape.gradient(loss, constant_input))


def official_step(model, images, labels, noise01, li, d, eps, ls, cur_lambda, mask_range):
    """One batch of the official loop after LI; noise01 in [0, 1) gives uniform_(-b eps, b eps). Returns the
    gradients, the final adversarial images and the training-mode forward inputs."""
    large = eps * 255 > 8
    delta = tf.gather(li, labels)
    bonulli_idx = d["mask"]
    bound = 2 * eps if large else eps
    uniform_noise = noise01 * (2 * bound) - bound
    mask_ratio = d["scalars"][0] * (mask_range[1] - mask_range[0]) + mask_range[0]
    delta = tf.where(bonulli_idx < mask_ratio, uniform_noise, delta)
    if d["scalars"][1] < 0.5:
        adv_images = tf.clip_by_value(images - delta, 0, 1)
    else:
        adv_images = tf.clip_by_value(images + delta, 0, 1)
    start = adv_images
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            inner.watch(adv_images)
            ori_output = model(adv_images, training=True)
            ori_loss = custom_cross_entropy(ori_output, labels, ls, d["attack"])
        delta = eps * tf.sign(inner.gradient(ori_loss, adv_images))
        adv_images = adv_images + delta
        if large:
            adv_images = tf.clip_by_value(adv_images, 0, 1)
        else:
            delta = tf.clip_by_value(adv_images - images, -eps, eps)
            adv_images = tf.clip_by_value(images + delta, 0, 1)
        adv_images = tf.stop_gradient(adv_images)
        output = model(adv_images, training=True)
        loss1 = custom_cross_entropy(output, labels, ls, d["training"])
        p, q = tf.nn.softmax(ori_output, axis=1), tf.nn.softmax(output, axis=1)
        m = tf.math.log(tf.clip_by_value((p + q) / 2.0, 0, 1))
        loss2 = cur_lambda * (kl_div_batchmean(m, p) + kl_div_batchmean(m, q)) / 2
        loss = loss1 + loss2
    return outer.gradient(loss, model.trainable_variables), adv_images, [start, adv_images]


def context(step, steps_per_epoch, variables):
    from tf_fastbat.methods.base import StepContext

    epoch = step // steps_per_epoch
    return StepContext(tf.constant(step, tf.int64), tf.constant(step / steps_per_epoch, tf.float32),
                       tf.constant(epoch, tf.int64), None, variables,
                       tf.constant(step - epoch * steps_per_epoch, tf.int64))


def noise_of(noise01, eps):
    """The trainer's U[-eps, eps] noise for the same uniform draws (the official's uniform_ is affine in it)."""
    return noise01 * (2 * eps) - eps


@pytest.mark.parametrize("eps_255", [8, 16])
def test_consecutive_steps_equal_the_official_loop(eps_255, real_batch):
    """Five steps, SGD between them, 3 steps per epoch, li_update 2 and 2 ramp epochs: LI is computed at steps
    0, 2 and 3 (the epoch's first) and reused at 1 and 4; lambda is lambda / 2, then lambda. Gradients, inputs and
    the stored LI agree with the official loop; at the reused steps the current weights would give another LI."""
    from tf_fastbat import methods
    from tf_fastbat.methods import state

    eps, ls, lam, mask_range = SETTINGS[eps_255]
    x, y = real_batch
    lam *= 5  # weights the consistency term well above the tolerance in the tiny model's gradient (checked)
    method = methods.build("liet", eps=eps, consistency_weight=lam, li_update=2, ramp_epochs=2.0, seed=SEED)
    assert (method.settings().random_smoothing, method.settings().mask_ratio) == (ls, mask_range)
    variables = state.create(method.state_spec(0, (32, 32, 3), CLASSES))
    official_model, model = tiny_model(), tiny_model()
    step = tf.function(method.step)
    rng = np.random.default_rng(eps_255)
    li, reused_differs = None, []
    for t in range(5):
        d = draws(t)
        noise01 = tf.constant(rng.uniform(0, 1, x.shape).astype(np.float32))
        epoch, idx = divmod(t, 3)
        cur_lambda = (epoch + 1) * (lam / 2)
        if idx % 2 == 0:
            li = official_li(official_model, d["li"], eps, ls)
        else:
            reused_differs.append(bool(np.any(official_li(official_model, d["li"], eps, ls).numpy() != li.numpy())))
        before = moving_averages(official_model)
        grads, x_adv, forward_inputs = official_step(official_model, x, y, noise01, li, d, eps, ls,
                                                            cur_lambda, mask_range)
        expected_averages = torch_rule_moving_averages(official_model, before, forward_inputs)
        if t == 1:  # the same forwards without the consistency term (the moving averages end the same)
            restore(official_model, before)
            unregularized = official_step(official_model, x, y, noise01, li, d, eps, ls, 0.0, mask_range)[0]
            assert np.linalg.norm(flat(grads) - flat(unregularized)) > 1e-2 * np.linalg.norm(flat(unregularized))
        restore(model, before)
        result = step(model, x, y, noise_of(noise01, eps), context=context(t, 3, variables))
        np.testing.assert_array_equal(variables["label_indicative"].numpy(), li.numpy())
        np.testing.assert_allclose(result.x_adv.numpy(), x_adv.numpy(), atol=1e-6)
        expected, got = flat(grads), flat(result.grads)
        assert np.linalg.norm(got - expected) <= 1e-5 * np.linalg.norm(expected), t
        for (mean, variance), (expected_mean, expected_variance) in zip(moving_averages(model), expected_averages):
            np.testing.assert_allclose(mean, expected_mean, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(variance, expected_variance, rtol=1e-5, atol=1e-6)
        for variable, gradient in zip(official_model.trainable_variables, grads):
            variable.assign_sub(0.05 * gradient)
        for ours, official in zip(model.weights, official_model.weights):
            ours.assign(official)
    assert reused_differs == [True, True], "reusing the stored LI must matter in the compared steps"


def test_start_mixes_noise_and_li_at_the_drawn_ratio_and_large_eps_is_not_projected():
    """The start's coordinates are LI_y or noise in the drawn proportion; at 16/255 the final point can leave the
    eps-ball (only the box is kept), at 8/255 it cannot."""
    from tf_fastbat import methods

    x = tf.fill([64, 8, 8, 3], 0.5)
    y = tf.constant(np.arange(64) % 3, tf.int32)
    li = tf.constant(np.stack([np.full((8, 8, 3), v, np.float32) for v in (-1.0, 2.0, 3.0)]))
    for eps_255, step in ((8, 0), (16, 1)):
        method = methods.build("liet", eps=eps_255 / 255, seed=SEED)
        low, high = method.settings().mask_ratio
        scalars = draws(step, (64, 8, 8, 3))["scalars"]
        ratio = scalars[0] * (high - low) + low
        noise = tf.fill(x.shape, 100.0)  # marks noise coordinates
        start = method.start(x, y, noise, li * 0.01, tf.constant(step, tf.int64)).numpy()
        sign = -1.0 if scalars[1] < 0.5 else 1.0
        from_noise = start == np.clip(0.5 + sign * 100.0 * (2 if eps_255 == 16 else 1), 0, 1)
        np.testing.assert_allclose(from_noise.mean(), ratio, atol=0.02)
        kept = start[~from_noise].reshape(-1)
        expected = (0.5 + sign * 0.01 * li.numpy()[y.numpy()])[~from_noise].reshape(-1)
        np.testing.assert_allclose(kept, expected, rtol=1e-6)
        far = tf.fill(x.shape, 0.5 + 3 * method.eps)
        beyond = np.abs(method.final_point(x, far).numpy() - 0.5).max()
        assert beyond == pytest.approx(3 * method.eps if eps_255 == 16 else method.eps, rel=1e-5)


def test_bad_settings_are_refused_with_the_name():
    from tf_fastbat import methods

    with pytest.raises(ValueError, match="mask_ratio"):
        methods.build("liet", mask_ratio=(0.6, 0.2))
    with pytest.raises(ValueError, match="label_smoothing"):
        methods.build("liet", label_smoothing=0.4)


# ---- through the trainer: backup and restore, and MirroredStrategy -----------------------------------------------

def build_trainer(classifier, steps_per_epoch, num_examples=BATCH):
    from tf_fastbat import methods
    from tf_fastbat.trainer import assemble, sgd

    method = methods.build("liet", eps=8 / 255, consistency_weight=1000.0, li_update=2, ramp_epochs=4.0, seed=SEED)
    return assemble(classifier, method, sgd(0.05, 0.9, 5e-4), seed=SEED, num_examples=num_examples,
                    steps_per_epoch=steps_per_epoch)


def snapshot(trainer):
    weights = np.concatenate([np.asarray(v.numpy(), np.float64).ravel() for v in trainer.classifier.weights])
    return weights, trainer.method_state["label_indicative"].numpy().copy()


def test_state_survives_a_backup_and_the_restored_trainer_continues_exactly(real_batch, tmp_path):
    """A backup after the first step (LI computed there); the continued second step reuses the restored LI."""
    from tf_fastbat import backup
    from tf_fastbat.resume import Position, RunState

    x, y = real_batch
    batches = [(x[i:i + 8], y[i:i + 8]) for i in (0, 8, 0, 8)]

    def run_state(trainer):
        return RunState(trainer, tf.distribute.get_strategy(), str(tmp_path / "ckpt"), str(tmp_path / "log.csv"),
                        batch_size=8, steps_per_epoch=3)

    keras.backend.clear_session()
    unbroken = build_trainer(tiny_model(), 3)
    unbroken.train_on_batch(*batches[0])
    source = run_state(unbroken)
    path = backup.write(str(tmp_path / "backup"), 1, source.arrays(), source.state(Position(0, 1), 0.0))
    saved = snapshot(unbroken)
    assert np.abs(saved[1]).max() > 0

    keras.backend.clear_session()
    resumed = build_trainer(tiny_model(seed=1), 3)
    assert not np.array_equal(snapshot(resumed)[1], saved[1])
    run_state(resumed).restore(backup.read(path))
    for got, expected in zip(snapshot(resumed), saved):
        np.testing.assert_array_equal(got, expected)
    for xb, yb in batches[1:]:
        unbroken.train_on_batch(xb, yb)
        resumed.train_on_batch(xb, yb)
        for got, expected in zip(snapshot(resumed), snapshot(unbroken)):
            np.testing.assert_array_equal(got, expected)


def distributed_runs(out: str) -> None:
    """Subprocess: 5 steps of LIET on 2 logical CPUs (MirroredStrategy) and on one."""
    from test_distribution import build_classifier
    from two_replicas import state_runs

    np.savez(out, **state_runs(lambda: build_trainer(build_classifier("syncbn"), 3, num_examples=24), 5))


def test_state_is_identical_across_two_replicas_and_equals_one_device(tmp_path):
    out = str(tmp_path / "runs.npz")
    run_as_script(__file__, out)
    with np.load(out) as runs:
        assert int(runs["replicas"]) == 2 and runs["mirrored/agree"].all()
        single = runs["single/state/label_indicative"]
        assert len({s.tobytes() for s in single}) > 1, "LI must be recomputed in the compared steps"
        np.testing.assert_array_equal(runs["mirrored/state/label_indicative"], single)
        scale = np.abs(runs["single/weights"]).max()
        np.testing.assert_allclose(runs["mirrored/weights"], runs["single/weights"], rtol=1e-4, atol=1e-5 * scale)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    distributed_runs(sys.argv[1])
