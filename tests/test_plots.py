"""The PNG figures draw the numbers they are given: curves read back from the returned matplotlib figures."""

import numpy as np
import pytest
from matplotlib.image import imread

from tf_fastbat import plots, record, train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    assert open(path, "rb").read(8) == PNG_MAGIC
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    return image


def test_robust_accuracy_against_eps_draws_one_line_per_model_and_attack_from_the_clean_accuracy(tmp_path):
    reports = {
        "fast_bat": {"clean_accuracy": 0.8, "robust_accuracy": {
            "pgd-50-10": {"8/255": 0.45, "4/255": 0.62, "16/255": 0.15}, "autoattack": {"8/255": 0.4}}},
        "fast_at": {"clean_accuracy": 0.85, "robust_accuracy": {"pgd-50-10": {"16/255": 0.0, "4/255": 0.55}}},
    }
    path = tmp_path / "ra.png"
    figure = plots.robust_accuracy_vs_eps(reports, str(path))
    read_png(path)
    axes = figure.axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert sorted(lines) == ["fast_at: pgd-50-10", "fast_bat: autoattack", "fast_bat: pgd-50-10"]
    expected = {"fast_bat: pgd-50-10": ([0, 4, 8, 16], [80, 62, 45, 15]), "fast_bat: autoattack": ([0, 8], [80, 40]),
                "fast_at: pgd-50-10": ([0, 4, 16], [85, 55, 0])}
    for label, (eps, accuracy) in expected.items():  # eps 0 is each model's clean accuracy
        np.testing.assert_allclose(lines[label].get_xdata(), eps)
        np.testing.assert_allclose(lines[label].get_ydata(), accuracy)
    assert axes.get_ylim() == (0, 100)
    chosen = plots.robust_accuracy_vs_eps(reports, str(path), attack="autoattack").axes[0].get_lines()
    assert [line.get_label() for line in chosen] == ["fast_bat: autoattack", "fast_at: pgd-50-10"]  # its PGD else


def test_robust_accuracy_against_eps_shows_a_pgd_only_run_and_keeps_a_measured_zero(tmp_path):
    only_pgd = {"run": {"clean_accuracy": 0.5, "robust_accuracy": {"pgd-20-1": {"8/255": 0.25}}}}
    (line,) = plots.robust_accuracy_vs_eps(only_pgd, str(tmp_path / "a.png")).axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0, 8])
    np.testing.assert_allclose(line.get_ydata(), [50, 25])
    measured = {"run": {"clean_accuracy": 0.5, "robust_accuracy": {"pgd-20-1": {"0/255": 0.5, "8/255": 0.25}}}}
    (line,) = plots.robust_accuracy_vs_eps(measured, str(tmp_path / "b.png")).axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [0, 8])  # no second point at eps 0
    np.testing.assert_allclose(line.get_ydata(), [50, 25])


def test_autoattack_breakdown_bars_are_the_reports_per_attack_figures(tmp_path):
    details = {  # the report's autoattack_details, by eps key (evaluation.evaluate_model)
        "8/255": {"clean_accuracy": 0.75, "robust_accuracy": 0.375, "per_attack_robust_accuracy": {
            "apgd-ce": 0.5, "apgd-t": 0.4375, "fab-t": 0.4375, "square": 0.375}},
        "4/255": {"clean_accuracy": 0.75, "robust_accuracy": 0.625, "per_attack_robust_accuracy": {
            "apgd-ce": 0.6875, "apgd-t": 0.625, "fab-t": 0.625, "square": 0.625}},
    }
    path = tmp_path / "aa.png"
    figure = plots.autoattack_breakdown(details, str(path))
    read_png(path)
    panels = [axes for axes in figure.axes if axes.patches]
    assert [axes.get_title() for axes in panels] == ["eps 4/255", "eps 8/255"]  # sorted by eps
    for axes, key in zip(panels, ["4/255", "8/255"]):
        labels = [tick.get_text() for tick in axes.get_xticklabels()]
        assert labels == ["clean", "after apgd-ce", "after apgd-t", "after fab-t", "after square"]
        wanted = [details[key]["clean_accuracy"]] + list(details[key]["per_attack_robust_accuracy"].values())
        np.testing.assert_allclose([bar.get_height() for bar in axes.patches], 100 * np.array(wanted))
        assert axes.patches[-1].get_height() == pytest.approx(100 * details[key]["robust_accuracy"])
        assert axes.get_ylim()[0] == 0
        shown = [text.get_text() for text in axes.texts]  # each bar labelled with its value
        assert shown == [f"{100 * v:.1f}" for v in wanted]


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
    assert set(panels) == {"training loss", "accuracy", "learning rate", "epoch time", plots.HELD_OUT_TITLE}
    np.testing.assert_allclose(panels["training loss"]["loss"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(panels["training loss"]["loss"].get_ydata(), [2.0, 1.7, 1.5])
    np.testing.assert_allclose(panels["accuracy"]["accuracy"].get_ydata(), [25, 35, 45])
    robust = panels["accuracy"]["val_robust_accuracy"].get_ydata()
    assert robust[0] == pytest.approx(12) and np.isnan(robust[1]) and robust[2] == pytest.approx(30)
    np.testing.assert_allclose(panels["learning rate"]["learning_rate"].get_ydata(), [0.1, 0.2, 0.05])


def test_training_curves_mark_the_best_epoch_on_the_held_out_robust_accuracy(tmp_path):
    robust = [0.10, 0.31, np.nan, 0.28, 0.31, 0.2]  # the first of two equal maxima is kept (strictly better only)
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_clean_accuracy,val_robust_accuracy\n" + "".join(
        f"{e},{2 - 0.1 * e},0.5,{'' if np.isnan(r) else r}\n" for e, r in enumerate(robust)))
    figure = plots.training_curves(str(log), str(tmp_path / "curves.png"))
    (held_out,) = [axes for axes in figure.axes if axes.get_title() == plots.HELD_OUT_TITLE]
    lines = {line.get_label(): line for line in held_out.get_lines()}
    np.testing.assert_allclose(lines["val_robust_accuracy"].get_xdata(), [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(lines["val_robust_accuracy"].get_ydata(), 100 * np.array(robust))
    best = int(np.nanargmax(robust)) + 1
    assert best == 2
    marker = lines[f"best epoch {best}"]
    np.testing.assert_allclose(marker.get_xdata(), [best, best])  # a vertical line at the best epoch
    assert any(text.get_text().startswith(f"best epoch {best}\n31.0%") for text in held_out.texts)
    assert held_out.get_ylim()[0] == 0 and held_out.get_ylim()[1] >= 31
    given = plots.training_curves(str(log), str(tmp_path / "c.png"), best_epoch=5)  # best.json's epoch wins
    (held_out,) = [axes for axes in given.axes if axes.get_title() == plots.HELD_OUT_TITLE]
    assert [line.get_xdata()[0] for line in held_out.get_lines() if line.get_label() == "best epoch 5"] == [5]


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


def test_training_writes_its_curves_and_one_ra_line_when_the_best_epoch_was_the_last(tmp_path, monkeypatch):
    log = tmp_path / "training_log.csv"
    log.write_text("epoch,loss,val_robust_accuracy\n0,2.0,0.1\n1,1.8,0.2\n")
    best = {"clean_accuracy": 0.4, "robust_accuracy": {"pgd-20-1": {"8/255": 0.2}}}
    other = {"clean_accuracy": 0.5, "robust_accuracy": {"pgd-20-1": {"8/255": 0.1}}}
    drawn = []
    draw = plots.robust_accuracy_vs_eps
    monkeypatch.setattr(plots, "robust_accuracy_vs_eps", lambda reports, path: drawn.append(draw(reports, path)))
    written = train.write_plots(record.Workdir(str(tmp_path)), {"best": best, "last": best}, 2)
    assert written == {"training_curves": str(tmp_path / "training_curves.png"),
                       "ra_vs_eps": str(tmp_path / "ra_vs_eps.png")}
    for path in written.values():
        read_png(path)
    train.write_plots(record.Workdir(str(tmp_path)), {"best": best, "last": other}, 2)
    labels = [[line.get_label() for line in figure.axes[0].get_lines()] for figure in drawn]
    assert labels == [["best (= last): pgd-20-1"], ["best: pgd-20-1", "last: pgd-20-1"]]
