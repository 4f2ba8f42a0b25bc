"""The PNG figures draw the numbers they are given: curves read back from the returned matplotlib figures."""

import numpy as np
import pytest
from matplotlib.image import imread

from tf_fastbat import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert open(path, "rb").read(8) == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_robust_accuracy_against_eps_draws_one_curve_per_model_sorted_by_eps(tmp_path):
    reports = {
        "fast_bat": {"clean_accuracy": 0.8, "robust_accuracy": {
            "pgd-50-10": {"8/255": 0.45, "4/255": 0.62, "16/255": 0.15}, "autoattack": {"8/255": 0.4}}},
        "fast_at": {"clean_accuracy": 0.85, "robust_accuracy": {"pgd-50-10": {"16/255": 0.0, "4/255": 0.55}}},
    }
    path = tmp_path / "ra.png"
    figure = plots.robust_accuracy_vs_eps(reports, str(path))
    read_png(path)
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["fast_bat (pgd-50-10)", "fast_at (pgd-50-10)"]
    np.testing.assert_allclose(lines[0].get_xdata(), [4, 8, 16])
    np.testing.assert_allclose(lines[0].get_ydata(), [62, 45, 15])
    np.testing.assert_allclose(lines[1].get_xdata(), [4, 16])
    np.testing.assert_allclose(lines[1].get_ydata(), [55, 0])
    chosen = plots.robust_accuracy_vs_eps(reports, str(path), attack="autoattack").axes[0].get_lines()
    np.testing.assert_allclose(chosen[0].get_ydata(), [40])  # the named attack where a model has it
    assert chosen[1].get_label() == "fast_at (pgd-50-10)"  # its PGD where it does not


def test_training_curves_plot_every_logged_quantity(tmp_path):
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,accuracy,loss,learning_rate,epoch_seconds,val_clean_accuracy,val_robust_accuracy\n"
                   "0,0.25,2.0,0.1,30.5,0.3,0.12\n"
                   "1,0.35,1.7,0.2,29.0,0.4,\n"
                   "2,0.45,1.5,0.05,29.5,0.5,0.3\n")
    path = tmp_path / "curves.png"
    figure = plots.training_curves(str(log), str(path))
    read_png(path)
    panels = {axes.get_title(): {line.get_label(): line for line in axes.get_lines()} for axes in figure.axes}
    assert set(panels) == {"training loss", "accuracy", "learning rate", "epoch time"}
    np.testing.assert_allclose(panels["training loss"]["loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(panels["training loss"]["loss"].get_ydata(), [2.0, 1.7, 1.5])
    np.testing.assert_allclose(panels["accuracy"]["accuracy"].get_ydata(), [25, 35, 45])
    robust = panels["accuracy"]["val_robust_accuracy"].get_ydata()
    assert robust[0] == pytest.approx(12) and np.isnan(robust[1]) and robust[2] == pytest.approx(30)
    np.testing.assert_allclose(panels["learning rate"]["learning_rate"].get_ydata(), [0.1, 0.2, 0.05])


def test_training_curves_refuse_a_file_that_is_not_a_keras_log(tmp_path):
    log = tmp_path / "other.csv"
    log.write_text("step,value\n1,2\n")
    with pytest.raises(ValueError, match="no 'epoch' column"):
        plots.training_curves(str(log), str(tmp_path / "x.png"))


def test_loss_landscape_draws_the_grid_it_is_given(tmp_path):
    a = np.linspace(-8 / 255, 8 / 255, 5)
    b = np.linspace(-8 / 255, 8 / 255, 7)
    loss = np.add.outer(3 * a, b ** 2) + 1.0  # rises along a, a parabola along b
    path = tmp_path / "landscape.png"
    figure = plots.loss_landscape(a, b, loss, str(path))
    read_png(path)
    contour = figure.axes[1]
    x_low, x_high = contour.get_xlim()
    y_low, y_high = contour.get_ylim()
    assert (x_low, x_high) == pytest.approx((-8, 8)) and (y_low, y_high) == pytest.approx((-8, 8))
    colorbar = figure.axes[2]
    low, high = colorbar.get_ylim()
    assert low <= loss.min() + 1e-9 and high >= loss.max() - 1e-9 and high - low < 2 * np.ptp(loss)
    surface_z = figure.axes[0].get_zlim()
    assert surface_z[0] <= loss.min() and surface_z[1] >= loss.max()
