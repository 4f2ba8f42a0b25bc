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
    with pytest.raises(ValueError, match="--lr_schedule"):
        optim.schedule("cosine", epochs=1, steps_per_epoch=1, lr_max=0.1)
