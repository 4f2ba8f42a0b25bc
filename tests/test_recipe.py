"""FastAT_Benchmark's recipe (fzjcdt/FastAT_Benchmark): weight averaging, label smoothing, the one-cycle schedule,
ResNet-18 and the flagfiles, each against the benchmark's code written out here (NumPy) or torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLED_SLICE, ROOT

TAU = 0.9  # far from 1, so that a few steps separate the average from the weights
EPS = 8.0 / 255.0


def tiny_classifier(seed: int = 0, batch_norm: bool = True):
    """A small CNN (the models' torch-like BatchNorm optional) mapping 8x8x3 images to 3 logits."""
    import keras

    from tf_fastbat.models.layers import batch_norm as torch_batch_norm

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", use_bias=not batch_norm, name="conv")(inputs)
    if batch_norm:
        h = torch_batch_norm("bn")(h)
    h = keras.layers.Activation("softplus")(h)
    h = keras.layers.Activation("softplus")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def batches(count: int, size: int = 8, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (count * size, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 3, count * size).astype(np.int32)
    return x, y


def averaged_trainer(seed: int = 0, method: str = "fast_at", eager: bool = False):
    from tf_fastbat import methods
    from tf_fastbat.optim import schedule
    from tf_fastbat.trainer import assemble, sgd
    from tf_fastbat.weight_averaging import WeightAverage

    classifier = tiny_classifier(seed)
    lr = schedule("one_cycle", epochs=3, steps_per_epoch=2, lr_max=0.5)
    trainer = assemble(classifier, methods.build(method, eps=EPS, label_smoothing=0.4), sgd(lr, 0.9, 5e-4), seed=5)
    trainer.average = WeightAverage(classifier, TAU)
    trainer.run_eagerly = eager  # eager skips tracing where the graph is not what a test is about
    return classifier, trainer


def fit(trainer, x, y, epochs: int, steps: int, callbacks=(), start: int = 0):
    """`epochs` epochs of `steps` batches of 8, from batch `start` of (x, y)."""
    import tensorflow as tf

    stream = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).skip(start).repeat()
    trainer.fit(stream, epochs=epochs, steps_per_epoch=steps, callbacks=list(callbacks), verbose=0)


def recorder(classifier, states: list):
    """Appends the classifier's whole state (weights and BatchNorm statistics) after every training step."""
    import keras

    return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: states.append(
        [np.array(v.numpy()) for v in classifier.variables]))


def benchmark_exp_avg(states, tau: float):
    """FastAT_Benchmark's `exp_avg`, op by op: it starts as `model.state_dict()`, whose tensors alias the live
    parameters and buffers, so its first update after opt.step() blends the new state with itself; later updates
    blend it with the rebound averages: exp_avg[key] = (1 - tau) * value + tau * exp_avg[key]."""
    averages = None
    for state in states:
        previous = state if averages is None else averages  # the aliased state dict on the first update
        averages = [(1 - tau) * value + tau * average for value, average in zip(state, previous)]
    return averages


@pytest.fixture(scope="module")
def averaged_run(tmp_path_factory):
    """Two epochs of two steps with early stopping on the average: the states after each step, the epoch ends,
    the averages at the end, and the checkpoint folder."""
    import keras

    from tf_fastbat import callbacks as cb

    checkpoints = tmp_path_factory.mktemp("checkpoints")
    classifier, trainer = averaged_trainer()
    x, y = batches(4)
    states, epoch_ends = [], []
    mark = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch_ends.append(len(states)))
    x_val, y_val = batches(2, seed=9)
    validation = cb.RobustValidation(trainer.average.model, str(checkpoints), x_val, y_val, EPS, 2, 1, seed=1)
    fit(trainer, x, y, epochs=2, steps=2, callbacks=[recorder(classifier, states), mark, validation])
    return {"states": states, "epoch_ends": epoch_ends, "checkpoints": checkpoints,
            "names": [v.path for v in classifier.variables],
            "average": [v.numpy() for v in trainer.average.model.variables]}


def test_weight_average_after_k_steps_is_the_benchmarks_exp_avg_of_the_successive_states(averaged_run):
    states, names = averaged_run["states"], averaged_run["names"]
    assert len(states) == 4
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
    for name, expected, got, last in zip(names, benchmark_exp_avg(states, TAU), averaged_run["average"], states[-1]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=name)
        assert np.abs(got - last).max() > 1e-4, f"{name}: the average should lag the weights"


def test_best_and_last_checkpoints_hold_the_average(averaged_run):
    from tf_fastbat import models
    from tf_fastbat.checkpoints import read_json

    folder, states, ends = averaged_run["checkpoints"], averaged_run["states"], averaged_run["epoch_ends"]
    best = read_json(str(folder / "best.json"))
    for name, count in (("last", ends[-1]), ("best", ends[best["epoch"] - 1])):
        saved = [v.numpy() for v in models.load(str(folder / f"{name}.keras")).variables]
        for expected, got in zip(benchmark_exp_avg(states[:count], TAU), saved):
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7, err_msg=name)
        assert max(np.abs(s - w).max() for s, w in zip(saved, states[count - 1])) > 1e-3  # not the raw weights


def test_a_backup_restored_mid_run_continues_the_average_exactly(tmp_path):
    from tf_fastbat import backup, resume

    x, y = batches(4)
    _, unbroken = averaged_trainer(eager=True)
    fit(unbroken, x, y, epochs=2, steps=2)
    _, first = averaged_trainer(eager=True)
    fit(first, x, y, epochs=1, steps=2)
    run = resume.RunState(first, first.distribute_strategy, str(tmp_path / "a"), str(tmp_path / "log.csv"), 8, 2)
    assert any(name.startswith("average/") for name, _ in run.describe())
    backup.write(str(tmp_path / "backup"), 2, run.arrays(), run.state(resume.Position(1, 0), 0.0))
    _, resumed = averaged_trainer(seed=1, eager=True)  # other initial weights: everything must come from the backup
    restored = resume.RunState(resumed, resumed.distribute_strategy, str(tmp_path / "b"), str(tmp_path / "log.csv"), 8,
                               2).restore(backup.newest(str(tmp_path / "backup"), print))
    assert restored.position == resume.Position(1, 0)
    fit(resumed, x, y, epochs=1, steps=2, start=2)
    for a, b in zip(resumed.average.model.variables, unbroken.average.model.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(resumed.optimizer.iterations.numpy()) == 4


MIRRORED = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, "tests")
import test_recipe as r
from tf_fastbat import distribution
out = {}
for name, strategy in (("single", tf.distribute.get_strategy()),
                       ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))):
    with strategy.scope():
        classifier, trainer = r.averaged_trainer()
        distribution.synchronize_batch_norm(classifier)
    x, y = r.batches(3)
    r.fit(trainer, x, y, epochs=1, steps=3)
    out[name] = [v.numpy().tolist() for v in trainer.average.model.variables]
print(json.dumps(out))
"""


@pytest.mark.slow  # a subprocess with two logical CPUs (about 20 s)
def test_the_average_under_mirrored_strategy_equals_one_device():
    result = subprocess.run([sys.executable, "-c", MIRRORED], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for single, mirrored in zip(out["single"], out["mirrored"]):
        np.testing.assert_allclose(np.array(mirrored), np.array(single), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# Label smoothing.

def smoothed_ce_numpy(logits: np.ndarray, y: np.ndarray, s: float) -> float:
    """The closed form: target q = (1 - s) one_hot(y) + s / K; loss = mean_i -sum_k q_ik log softmax(z_i)_k."""
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    q = (1 - s) * np.eye(z.shape[1])[y] + s / z.shape[1]
    return float(-(q * log_p).sum(1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.4])
def test_label_smoothed_cross_entropy_is_the_closed_form_and_torchs(smoothing):
    import torch

    from tf_fastbat.methods.common import ce_mean, ce_sum

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    expected = smoothed_ce_numpy(logits, y, smoothing)
    torch_loss = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(y), label_smoothing=smoothing)
    assert float(ce_mean(logits, y, smoothing)) == pytest.approx(expected, rel=1e-6)
    assert float(ce_mean(logits, y, smoothing)) == pytest.approx(float(torch_loss), rel=1e-6)
    assert float(ce_sum(logits, y, smoothing)) == pytest.approx(16 * expected, rel=1e-6)


def benchmark_step(model, x, y, noise, s_attack: float, s_train: float, attack: str):
    """FastAT_Benchmark's loops written out: FGSM-RS (`attack`="fgsm_rs") or PGD-2 of 0.5 eps ("pgd"), each
    attack gradient from CrossEntropyLoss(label_smoothing=s_attack), the weights' from s_train."""
    import tensorflow as tf

    def criterion(logits, s):
        k = logits.shape[-1]
        q = (1 - s) * tf.one_hot(y, k) + s / k
        return -tf.reduce_mean(tf.reduce_sum(q * tf.nn.log_softmax(logits), axis=1))

    def input_grad(point):
        with tf.GradientTape() as tape:
            tape.watch(point)
            loss = criterion(model(point, training=True), s_attack)
        return tape.gradient(loss, point)

    x_adv = tf.clip_by_value(x + tf.clip_by_value(noise, -EPS, EPS), 0, 1)
    step, steps = (1.25 * EPS, 1) if attack == "fgsm_rs" else (0.5 * EPS, 2)
    for _ in range(steps):
        x_adv = x_adv + step * tf.sign(input_grad(x_adv))
        x_adv = tf.clip_by_value(x + tf.clip_by_value(x_adv - x, -EPS, EPS), 0, 1)
    with tf.GradientTape() as tape:
        loss = criterion(model(x_adv, training=True), s_train)
    return x_adv, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("method,attack,smoothed_attack", [("fast_at", "fgsm_rs", True), ("pgd", "pgd", False)])
def test_label_smoothing_applies_where_the_benchmark_applies_it(method, attack, smoothed_attack):
    """fgsm_rs.py (and n_fgsm.py) use the smoothed criterion for the attack and the training loss; pgd_at.py's
    torchattacks PGD uses its own plain cross-entropy, the training loss is smoothed."""
    import tensorflow as tf

    from tf_fastbat import methods
    from tf_fastbat.methods.base import standalone_context

    model = tiny_classifier(0, batch_norm=False)
    x, y = batches(1, size=16)
    noise = tf.random.stateless_uniform(x.shape, (1, 2), -EPS, EPS)
    hparams = {"eps": EPS, "label_smoothing": 0.9, **({"steps": 2} if method == "pgd" else {})}
    built = methods.build(method, **hparams)
    result = built.step(model, tf.constant(x), tf.constant(y), noise, standalone_context(built, model, x))
    s_attack = 0.9 if smoothed_attack else 0.0
    x_adv, grads = benchmark_step(model, x, y, noise, s_attack, 0.9, attack)
    other_x_adv, _ = benchmark_step(model, x, y, noise, 0.9 - s_attack, 0.9, attack)
    np.testing.assert_allclose(result.x_adv.numpy(), x_adv.numpy(), atol=1e-6)
    assert np.abs(other_x_adv.numpy() - x_adv.numpy()).max() > 1e-3  # the attack's smoothing is visible
    for g, e in zip(result.grads, grads):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-7)


def test_methods_that_do_not_apply_label_smoothing_refuse_it():
    from tf_fastbat import methods

    for name, cls in methods.REGISTRY.items():
        if not cls.smoothed_losses:
            with pytest.raises(ValueError, match="label_smoothing"):
                methods.build(name, label_smoothing=0.4)
        assert methods.build(name).smoothing("training") == 0.0


# ----------------------------------------------------------------------------------------------------------------
# The one-cycle schedule, ResNet-18, the flagfiles.

def torch_one_cycle_run(epochs: int, steps_per_epoch: int, theta0, targets):
    """main.py's optimizer and scheduler: SGD(lr=0.1, momentum=0.9, weight_decay=5e-4), OneCycleLR(max_lr=0.1,
    total_steps=epochs) stepped after each epoch; the parameters, lr and momentum at every optimizer step."""
    import torch

    parameter = torch.nn.Parameter(torch.tensor(theta0, dtype=torch.float64))
    sgd = torch.optim.SGD([parameter], lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.1, total_steps=epochs)
    thetas, lrs, momenta = [], [], []
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            lrs.append(sgd.param_groups[0]["lr"])
            momenta.append(sgd.param_groups[0]["momentum"])
            sgd.zero_grad()
            loss = 0.5 * torch.sum((parameter - torch.tensor(targets[epoch * steps_per_epoch + step])) ** 2)
            loss.backward()
            sgd.step()
            thetas.append(parameter.detach().numpy().copy())
        scheduler.step()
    return np.array(thetas), np.array(lrs), np.array(momenta)


def test_one_cycle_schedule_and_momentum_match_torch_over_a_whole_run():
    import keras

    from tf_fastbat.optim import CoupledSGD, momentum_schedule, schedule

    epochs, steps_per_epoch = 100, 2
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=5)
    targets = rng.normal(size=(epochs * steps_per_epoch, 5))
    thetas, torch_lrs, torch_momenta = torch_one_cycle_run(epochs, steps_per_epoch, theta0, targets)
    lr = schedule("one_cycle", epochs=epochs, steps_per_epoch=steps_per_epoch, lr_max=0.1)
    momentum = momentum_schedule("one_cycle", momentum=0.95, cycle_momentum=True, base_momentum=0.85, epochs=epochs,
                                 steps_per_epoch=steps_per_epoch)
    steps = np.arange(epochs * steps_per_epoch)
    np.testing.assert_allclose(np.array(lr(steps)), torch_lrs, rtol=1e-6)
    np.testing.assert_allclose(np.array(momentum(steps)), torch_momenta, rtol=1e-6)
    assert torch_lrs[0] == pytest.approx(0.004) and torch_lrs[-1] == pytest.approx(4e-7)
    assert torch_lrs.max() == pytest.approx(0.1) and np.argmax(torch_lrs) // steps_per_epoch == 29
    variable = keras.Variable(theta0.astype(np.float32))
    optimizer = CoupledSGD(lr, momentum=momentum, l2=5e-4)
    ours = []
    for target in targets:
        optimizer.apply_gradients([(variable - target.astype(np.float32), variable)])
        ours.append(variable.numpy().copy())
    np.testing.assert_allclose(np.array(ours), thetas, rtol=1e-4, atol=1e-5)


def test_one_cycle_schedules_survive_serialization():
    from keras.optimizers import schedules

    from tf_fastbat.optim import OneCycleLR, OneCycleMomentum

    for schedule in (OneCycleLR(0.1, 10, 7), OneCycleMomentum(0.85, 0.95, 10, 7)):
        clone = schedules.deserialize(schedules.serialize(schedule))
        assert type(clone) is type(schedule) and clone.get_config() == schedule.get_config()
        assert [float(clone(step)) for step in (0, 20, 69, 100)] == [float(schedule(step)) for step in (0, 20, 69, 100)]


def test_resnet18_is_kuangliu_cifar_resnet18():
    """FastAT_Benchmark's models/resnet.py ResNet18 (kuangliu/pytorch-cifar) has 11,173,962 parameters."""
    from tf_fastbat import models

    classifier = models.build("resnet18", 10)
    assert sum(int(np.prod(v.shape)) for v in classifier.trainable_variables) == 11_173_962
    assert classifier.output_shape == (None, 10)


FLAGFILES = """
import glob, json
from absl import flags
from tf_fastbat import config, flagtypes
config.define_training_flags()
out = {}
for path in sorted(glob.glob("flags/fastat_benchmark_*.cfg")):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", "--flagfile=" + path])
    config.validate_training(flags.FLAGS)
    out[path] = {**config.as_dict(flags.FLAGS), "hparams": config.method_hparams(flags.FLAGS)}
print(json.dumps(out))
"""
# configs/cifar10/common.yaml and <method>.yaml, and main.py's OneCycleLR (torch's momentum defaults).
BENCHMARK = {"architecture": "resnet18", "batch_size": 128, "epochs": 100, "lr_schedule": "one_cycle", "lr_max": 0.1,
             "momentum": 0.95, "base_momentum": 0.85, "cycle_momentum": True, "weight_decay": 5e-4,
             "label_smoothing": 0.4, "eps": 8.0, "val_ratio": 0.02, "es_pgd_steps": 10, "es_pgd_restarts": 1,
             "input_normalization": False}


def test_the_benchmark_flagfiles_hold_its_recipe():
    result = subprocess.run([sys.executable, "-c", FLAGFILES], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert {os.path.basename(p) for p in parsed} == {f"fastat_benchmark_resnet18_{m}_eps8.cfg" for m in (
        "fast_at", "n_fgsm", "fast_at_ga", "fast_bat", "pgd", "pgd_wa", "nu_at", "fgsm_pgi", "liet")}
    for path, values in parsed.items():
        own_criterion = path.endswith("_liet_eps8.cfg")  # liet.py's random label smoothing replaces the recipe's
        recipe = {**BENCHMARK, "label_smoothing": 0.0} if own_criterion else BENCHMARK
        assert {k: values[k] for k in BENCHMARK} == recipe, path
        assert values["hparams"].get("label_smoothing", 0.0) == recipe["label_smoothing"], path
        assert values["weight_averaging"] == (0.0 if path.endswith("_pgd_eps8.cfg") else 0.9995), path
    liet = parsed["flags/fastat_benchmark_resnet18_liet_eps8.cfg"]["hparams"]  # configs/cifar10/liet.yaml
    assert (liet["random_smoothing"], liet["consistency_weight"], liet["mask_ratio"], liet["li_update"]) == (
        0.6, 100.0, [0.1, 0.5], 20)
    nu_at = parsed["flags/fastat_benchmark_resnet18_nu_at_eps8.cfg"]["hparams"]  # nu_at.yaml, nuc_max / epochs
    assert (nu_at["nuc_max"], nu_at["nuc_ramp_epochs"]) == (4.0, 100.0)
    pgi = parsed["flags/fastat_benchmark_resnet18_fgsm_pgi_eps8.cfg"]["hparams"]  # fgsm_pgi.yaml
    assert (pgi["lamda"], pgi["momentum_decay"], pgi["epochs_reset"]) == (10.0, 0.3, 40)
    ga = parsed["flags/fastat_benchmark_resnet18_fast_at_ga_eps8.cfg"]
    assert ga["attack_lr"] == 8.0 and ga["ga_coef"] == 0.2  # grad_align.py: FGSM step eps, cos lambda 0.2
    pgd = parsed["flags/fastat_benchmark_resnet18_pgd_eps8.cfg"]
    assert (pgd["attack_steps"], pgd["attack_lr"]) == (10, 2.0)  # torchattacks PGD(alpha=2/255, steps=10)


@pytest.mark.slow  # one tiny end-to-end training run (about a minute on 2 cores)
def test_the_training_tool_validates_checkpoints_and_backs_up_the_average(tmp_path):
    from tf_fastbat import backup, models

    workdir = tmp_path / "run"
    args = [f"--workdir={workdir}", f"--dataset=npz:{BUNDLED_SLICE}", "--width_multiplier=0.125", "--batch_size=32",
            "--steps_per_epoch=2", "--epochs=2", "--backup_every_seconds=0", "--es_pgd_steps=2", "--es_pgd_restarts=1",
            "--es_num_examples=32", "--eval_pgd_steps=2", "--eval_pgd_restarts=1", "--eval_num_examples=32",
            "--tensorboard=false", "--method=fast_at", "--architecture=resnet18", "--lr_schedule=one_cycle",
            "--lr_max=0.1", "--momentum=0.95", "--base_momentum=0.85", "--weight_averaging=0.9", "--label_smoothing=0.4"]
    result = subprocess.run([sys.executable, "-m", "tf_fastbat.train", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = backup.newest(str(workdir / "backup"), print)
    names = [name for name, _ in found.state["variables"]]
    stored = {prefix: [found.arrays[f"{i:05d}"] for i, n in enumerate(names) if n.startswith(prefix)]
              for prefix in ("model/", "average/")}
    last = [v.numpy() for v in models.load(str(workdir / "checkpoints" / "last.keras")).variables]
    assert len(stored["average/"]) == len(stored["model/"]) == len(last)
    assert all(np.array_equal(a, s) for a, s in zip(stored["average/"], last))
    assert max(np.abs(a - s).max() for a, s in zip(stored["model/"], last)) > 1e-3
    report = json.loads((workdir / "report.json").read_text())
    assert report["method"]["label_smoothing"] == 0.4


@pytest.mark.parametrize("normalize", [True, False])
def test_input_normalization_flag_gives_the_dataset_statistics_or_raw_pixels(normalize):
    """--input_normalization=false: the network's first layer sees the [0, 1] pixels themselves (the benchmark's
    unnormalized inputs); true: (x - mean) / std with the dataset's statistics."""
    import types

    import keras

    from tf_fastbat import config, models

    mean, std = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
    statistics = config.input_statistics(mean, std, types.SimpleNamespace(input_normalization=normalize))
    classifier = models.build("preact_resnet18", 10, "relu", 0.25, (32, 32, 3), *statistics)
    first = keras.Model(classifier.inputs, classifier.get_layer("normalize").output)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    expected = (x - np.float32(mean)) / np.float32(std) if normalize else x
    np.testing.assert_allclose(first(x).numpy(), expected, rtol=1e-5, atol=1e-6)
    if not normalize:
        np.testing.assert_array_equal(first(x).numpy(), x)
