"""The optimizer and schedules against torch.optim's update rules, written out in NumPy."""

import numpy as np
import pytest
import keras

from tf_fastbat import optim


def test_coupled_sgd_matches_torch_sgd_with_changing_learning_rate():
    rates = [0.1, 0.05, 0.2, 0.0]
    schedule_steps = iter(rates)
    variable = keras.Variable(np.array([1.0, -2.0, 0.5], np.float32))
    grads = [np.array([0.3, -0.1, 0.2], np.float32), np.array([-0.5, 0.4, 0.0], np.float32),
             np.array([0.1, 0.1, -0.3], np.float32), np.array([0.2, -0.2, 0.2], np.float32)]

    class Steps(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return keras.ops.take(keras.ops.array(rates, "float32"), keras.ops.cast(step, "int32"))

    optimizer = optim.CoupledSGD(Steps(), momentum=0.9, l2=5e-4)
    theta, buffer = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for lr, g in zip(schedule_steps, grads):
        optimizer.apply_gradients([(keras.ops.array(g), variable)])
        d = g + 5e-4 * theta  # torch: d_p = grad + weight_decay * p; buf = momentum * buf + d_p; p -= lr * buf
        buffer = 0.9 * buffer + d
        theta = theta - lr * buffer
        np.testing.assert_allclose(variable.numpy(), theta, rtol=1e-6)


def test_cyclic_schedule_is_a_triangle_peaking_mid_run():
    lr = optim.schedule("cyclic", epochs=20, steps_per_epoch=10, lr_max=0.2)
    values = np.array([float(lr(s)) for s in range(201)])
    assert values[0] == 0.0 and values[100] == pytest.approx(0.2) and values[200] == pytest.approx(0.0, abs=1e-7)
    np.testing.assert_allclose(values[:101], np.linspace(0, 0.2, 101), atol=1e-7)
    np.testing.assert_allclose(values[100:], np.linspace(0.2, 0, 101), atol=1e-7)


def test_multistep_schedule_decays_at_key_epochs():
    lr = optim.schedule("multistep", epochs=200, steps_per_epoch=5, lr_max=0.1, key_epochs=[100, 150], decay=0.1)
    assert float(lr(499)) == pytest.approx(0.1)
    assert float(lr(500)) == pytest.approx(0.01)
    assert float(lr(750)) == pytest.approx(0.001)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="^kind='cosine': unknown learning-rate schedule"):
        optim.schedule("cosine", epochs=1, steps_per_epoch=1, lr_max=0.1)


def _torch_official_run(epochs, steps_per_epoch, milestone, cycle_momentum, theta0, targets):
    """The official trainer's optimizer and scheduler on a quadratic: SGD(0.2, momentum=0.9, weight_decay=5e-4)
    and CyclicLR(base_lr=0, max_lr=0.2, step_size_up=int(milestone * L), step_size_down=int((E - milestone) * L))."""
    import torch

    parameter = torch.nn.Parameter(torch.tensor(theta0))
    sgd = torch.optim.SGD([parameter], lr=0.2, weight_decay=5e-4, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        sgd, base_lr=0.0, max_lr=0.2, step_size_up=int(milestone * steps_per_epoch),
        step_size_down=int((epochs - milestone) * steps_per_epoch), cycle_momentum=cycle_momentum)
    trajectory, momenta = [], []
    for step in range(epochs * steps_per_epoch):
        sgd.zero_grad()
        loss = 0.5 * torch.sum((parameter - torch.tensor(targets[step])) ** 2)
        loss.backward()
        momenta.append(sgd.param_groups[0]["momentum"])
        sgd.step()
        scheduler.step()
        trajectory.append(parameter.detach().numpy().copy())
    return np.array(trajectory), np.array(momenta)


@pytest.mark.parametrize("cycle_momentum", [True, False])
def test_optimizer_and_cyclic_schedule_match_torch_over_a_whole_cycle(cycle_momentum):
    epochs, steps_per_epoch, milestone = 5, 3, 2
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=4).astype(np.float32)
    targets = rng.normal(size=(epochs * steps_per_epoch, 4)).astype(np.float32)
    expected, torch_momenta = _torch_official_run(epochs, steps_per_epoch, milestone, cycle_momentum, theta0, targets)

    lr = optim.schedule("cyclic", epochs=epochs, steps_per_epoch=steps_per_epoch, lr_max=0.2,
                        cyclic_milestone=milestone)
    momentum = optim.momentum_schedule("cyclic", momentum=0.9, cycle_momentum=cycle_momentum, base_momentum=0.8,
                                       epochs=epochs, steps_per_epoch=steps_per_epoch, cyclic_milestone=milestone)
    optimizer = optim.CoupledSGD(lr, momentum=momentum, l2=5e-4)
    variable = keras.Variable(theta0)
    for step in range(epochs * steps_per_epoch):
        optimizer.apply_gradients([(keras.ops.array(variable.numpy() - targets[step]), variable)])
        np.testing.assert_allclose(variable.numpy(), expected[step], rtol=1e-6, atol=1e-7)
    if cycle_momentum:  # torch cycles momentum from 0.9 down to 0.8 at the peak and back
        assert min(torch_momenta) == pytest.approx(0.8) and torch_momenta[0] == pytest.approx(0.9)
    else:
        assert set(np.round(torch_momenta, 12)) == {0.9}


def test_cyclic_momentum_survives_serialization():
    momentum = optim.momentum_schedule("cyclic", momentum=0.9, cycle_momentum=True, epochs=4, steps_per_epoch=5)
    optimizer = optim.CoupledSGD(0.1, momentum=momentum, l2=5e-4)
    restored = optim.CoupledSGD.from_config(optimizer.get_config())
    assert [float(restored.momentum(s)) for s in (0, 10, 20)] == pytest.approx([0.9, 0.8, 0.9])


def _torch_two_steps_run(kind, epochs, steps_per_epoch, theta0, targets):
    """torch's SGD(lr, momentum 0.9, weight_decay 5e-4) stepped twice per batch with the batch's gradient, as
    LIONS-EPFL/ELLE's Trainer.train does: a per-batch scheduler (CyclicLR, its 'GradAlign') steps between the two
    optimizer steps; a per-epoch one (OneCycleLR with total_steps = epochs) after the epoch's last batch."""
    import torch

    parameter = torch.nn.Parameter(torch.tensor(theta0))
    sgd = torch.optim.SGD([parameter], lr=0.2, weight_decay=5e-4, momentum=0.9)
    if kind == "cyclic":
        half = epochs * steps_per_epoch // 2
        scheduler = torch.optim.lr_scheduler.CyclicLR(sgd, base_lr=0.0, max_lr=0.2, step_size_up=half,
                                                      step_size_down=half)
    else:
        scheduler = torch.optim.lr_scheduler.OneCycleLR(sgd, max_lr=0.2, total_steps=epochs)
    trajectory = []
    for step in range(epochs * steps_per_epoch):
        sgd.zero_grad()
        (0.5 * torch.sum((parameter - torch.tensor(targets[step])) ** 2)).backward()
        sgd.step()
        if kind == "cyclic":
            scheduler.step()
        sgd.step()  # the same gradient: no zero_grad in between
        if kind != "cyclic" and (step + 1) % steps_per_epoch == 0 and step + 1 < epochs * steps_per_epoch:
            scheduler.step()
        trajectory.append(parameter.detach().numpy().copy())
    return np.array(trajectory)


@pytest.mark.parametrize("kind", ["cyclic", "one_cycle"])
def test_two_steps_per_batch_match_torch_stepped_twice(kind):
    """CoupledSGD(steps_per_batch=2), one apply per batch, against torch's two optimizer.step() calls: the second
    with the weight decay of the updated weights, the momentum buffer updated again, and the schedules' values after
    the scheduler's step between them (per batch: the next step's lr and momentum; per epoch: the same)."""
    epochs, steps_per_epoch = 4, 3
    rng = np.random.default_rng(1)
    theta0 = rng.normal(size=4).astype(np.float32)
    targets = rng.normal(size=(epochs * steps_per_epoch, 4)).astype(np.float32)
    expected = _torch_two_steps_run(kind, epochs, steps_per_epoch, theta0, targets)
    lr = optim.schedule(kind, epochs=epochs, steps_per_epoch=steps_per_epoch, lr_max=0.2)
    base = 0.8 if kind == "cyclic" else 0.85
    momentum = optim.momentum_schedule(kind, momentum=0.9 if kind == "cyclic" else 0.95, cycle_momentum=True,
                                       base_momentum=base, epochs=epochs, steps_per_epoch=steps_per_epoch)
    optimizer = optim.CoupledSGD(lr, momentum=momentum, l2=5e-4, steps_per_batch=2)
    assert optim.CoupledSGD.from_config(optimizer.get_config()).steps_per_batch == 2
    variable = keras.Variable(theta0)
    for step in range(epochs * steps_per_epoch):
        optimizer.apply_gradients([(keras.ops.array(variable.numpy() - targets[step]), variable)])
        np.testing.assert_allclose(variable.numpy(), expected[step], rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == epochs * steps_per_epoch
