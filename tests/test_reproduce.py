"""benchmarks/reproduce.py: every cell's command passes train.py's checks; tables agree with numpy over seeds."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

from benchmarks import reproduce

CHECK = """
import json, sys
from absl import flags
from tf_fastbat import config
config.define_training_flags()
out = []
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", *argv])
    config.validate_training(flags.FLAGS)
    out.append({"hparams": config.method_hparams(flags.FLAGS), "width": flags.FLAGS.width_multiplier,
                "activation": flags.FLAGS.activation, "epochs": flags.FLAGS.epochs, "seed": flags.FLAGS.seed,
                "dataset": flags.FLAGS.dataset, "eval_pgd_steps": flags.FLAGS.eval_pgd_steps,
                "eval_pgd_restarts": flags.FLAGS.eval_pgd_restarts})
print(json.dumps(out))
"""


def test_every_cell_command_parses_and_validates():
    cells = reproduce.grid_cells(reproduce.METHODS, [8, 16], [0, 1]) + reproduce.ablation_cells()
    argv = [cell.command("runs/reproduce", None)[3:] for cell in cells]
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    parsed = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(parsed) == 20 + len(reproduce.ABLATIONS)
    for cell, flags in zip(cells, parsed):
        assert flags["hparams"]["eps"] == pytest.approx(cell.eps / 255.0)
        assert flags["seed"] == cell.seed and flags["dataset"] == "bundled:cifar10_slice"
        assert (flags["eval_pgd_steps"], flags["eval_pgd_restarts"]) == (50, 10)  # PGD-50-10
        assert flags["width"] == 0.125
    by_name = {cell.name: flags for cell, flags in zip(cells, parsed)}
    assert by_name["pgd_eps8_seed0"]["hparams"]["steps"] == 2
    assert by_name["ablation_hessian_aware"]["hparams"]["implicit_gradient"] == "hessian_aware"
    assert by_name["ablation_lambda_1"]["hparams"]["lmbda"] == 1
    assert by_name["ablation_activation_softplus"]["activation"] == "softplus"
    assert by_name["fast_bat_eps8_seed0"]["hparams"]["implicit_gradient"] == "hessian_free"


def fake_cell(workdir, rng, epochs=3):
    """A finished cell's files, with random accuracies: (report, extra, per-epoch alignment)."""
    os.makedirs(workdir)
    sa, ra = rng.uniform(0.3, 0.6, 2), rng.uniform(0.1, 0.3, 2)
    report = {"best_epoch": 2, "epochs": epochs, "seconds_per_epoch": float(rng.uniform(5, 20)),
              "checkpoints": {name: {"clean_accuracy": float(sa[i]), "num_examples": 200,
                                     "robust_accuracy": {"pgd-50-10": {"8/255": float(ra[i])}}}
                              for i, name in enumerate(("best", "last"))}}
    aa = rng.uniform(0.05, 0.1, 2)
    extra = {name: {"autoattack": {"robust_accuracy": float(aa[i]), "num_examples": 64},
                    "pgd_50_10_on_aa_subset": float(aa[i] + 0.05),
                    "pgd_20_1_sweep": {str(e): float(rng.uniform()) for e in reproduce.SWEEP_EPS}}
             for i, name in enumerate(("best", "last"))}
    alignment = rng.uniform(0, 1, epochs)
    with open(os.path.join(workdir, "report.json"), "w") as out:
        json.dump(report, out)
    with open(os.path.join(workdir, "extra_eval.json"), "w") as out:
        json.dump(extra, out)
    with open(os.path.join(workdir, "training_log.csv"), "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["epoch", "gradient_alignment", "val_robust_accuracy"])
        writer.writerows([e, alignment[e], 0.2] for e in range(epochs))
    return report, extra, alignment


def test_report_gives_numpy_mean_and_sample_std_over_seeds(tmp_path):
    rng = np.random.default_rng(0)
    cells = reproduce.grid_cells(["fast_bat"], [8], [0, 1, 2])
    runs = [fake_cell(cell.workdir(str(tmp_path / "runs")), rng) for cell in cells]
    text = reproduce.report(cells, str(tmp_path / "runs"), ["fast_bat"], [8], [0, 1, 2], str(tmp_path / "results"),
                            str(tmp_path / "figures"))
    row = next(line for line in text.splitlines() if line.startswith("| Fast-BAT"))
    values = [cell.strip() for cell in row.strip("|").split("|")]

    def expected(numbers, scale=100.0):
        return f"{scale * np.mean(numbers):.1f} ± {scale * np.std(numbers, ddof=1):.1f}"

    best_sa = [r[0]["checkpoints"]["best"]["clean_accuracy"] for r in runs]
    last_ra = [r[0]["checkpoints"]["last"]["robust_accuracy"]["pgd-50-10"]["8/255"] for r in runs]
    best_aa = [r[1]["best"]["autoattack"]["robust_accuracy"] for r in runs]
    assert values[1] == expected(best_sa)
    assert values[3] == f"{expected(best_aa)} [{expected([a + 0.05 for a in best_aa])}]"
    assert values[5] == expected(last_ra)
    assert values[7] == "2, 2, 2"
    assert values[8] == expected([r[0]["seconds_per_epoch"] for r in runs], 1.0)
    assert values[9] == "3"
    for name in ("fig1_ra_vs_eps.png", "fig2_gradient_alignment.png", "held_out_ra_per_epoch.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 10_000
    summary = json.loads((tmp_path / "results" / "reproduce.json").read_text())
    np.testing.assert_allclose([row["gradient_alignment"] for row in summary["fast_bat_eps8_seed1"]["log"]],
                               runs[1][2], rtol=1e-6)


def test_bad_arguments_are_refused_before_work():
    with pytest.raises(SystemExit):
        reproduce.parse(["--methods=fast_at,bogus"])
    with pytest.raises(SystemExit):
        reproduce.parse(["--ablations=lambda_3"])
    with pytest.raises(SystemExit):
        reproduce.parse(["--seeds=a,b"])


# ----------------------------------------------------------------------------------------------------------------
# benchmarks/powered_grid.py (issue 12): the powered grid's cells, table, figure and resume, on fake cells.

from benchmarks import powered_grid  # noqa: E402


def test_powered_cells_parse_with_their_part_epochs_and_the_shared_slice():
    cells = [c for name in powered_grid.GROUPS["all"] for c in powered_grid.part_cells(powered_grid.PARTS[name])]
    assert [c.name for c in cells[:7]] == [f"{m}_eps16_seed0" for m in
                                           ("fast_at", "fast_bat", "n_fgsm", "fgsm_pgi", "nu_at", "elle_a", "liet")]
    assert sorted(c.name for c in cells[7:]) == sorted(f"{m}_eps8_seed{s}" for s in range(3) for m in
                                                       ("fast_at", "fast_bat", "n_fgsm", "fgsm_pgi", "liet"))
    argv = [cell.command("runs/powered", None)[3:] for cell in cells]
    assert all(a[0] == "--flagfile=flags/reproduce/powered.cfg" for a in argv)
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    for cell, flags in zip(cells, json.loads(result.stdout.strip().splitlines()[-1])):
        assert flags["hparams"]["eps"] == pytest.approx(cell.eps / 255.0) and flags["seed"] == cell.seed
        assert flags["epochs"] == powered_grid.PARTS[f"eps{cell.eps}"].epochs
        assert flags["width"] == 0.25 and (flags["eval_pgd_steps"], flags["eval_pgd_restarts"]) == (50, 2)
        assert flags["dataset"] == "npz:../shared/data/cifar10_subset.npz"
    assert (ROOT / ".." / "shared" / "data" / "cifar10_subset.npz").exists()  # the path, from the runner's cwd


def test_full_cifar10_cells_parse_with_the_full_data_width_and_evaluation():
    """--part=full: the Table 1 methods at 8 and 16/255 on the whole cifar10.npz, its own names, output and files."""
    args = powered_grid.parse(["--part=full"])
    assert args.output_dir == os.path.join("runs", "full_cifar10") and args.stem == "full_cifar10"
    expected = {f"full_{m}_eps{e}_seed0" for m in ("fast_at", "fast_bat", "fast_at_ga", "n_fgsm") for e in (8, 16)}
    assert {c.name for c in args.cells} == expected and len(args.cells) == 8
    argv = [cell.command(args.output_dir, None)[3:] for cell in args.cells]
    assert all(a[0] == "--flagfile=flags/reproduce/full_cifar10.cfg" for a in argv)
    result = subprocess.run([sys.executable, "-c", CHECK, json.dumps(argv)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    for cell, flags in zip(args.cells, json.loads(result.stdout.strip().splitlines()[-1])):
        assert flags["hparams"]["eps"] == pytest.approx(cell.eps / 255.0) and flags["epochs"] == 10
        assert flags["width"] == 0.25 and (flags["eval_pgd_steps"], flags["eval_pgd_restarts"]) == (20, 1)
        assert flags["dataset"] == "npz:../shared/data/cifar10.npz"
    assert (ROOT / ".." / "shared" / "data" / "cifar10.npz").exists()
    with pytest.raises(SystemExit):  # the small-data cells are not in --part=full
        powered_grid.parse(["--part=full", "--only=fast_at_eps16_seed0"])


def test_powered_grid_skips_methods_missing_from_names_with_one_line_each(capsys):
    cells = powered_grid.part_cells(powered_grid.PARTS["eps8"]) + powered_grid.part_cells(powered_grid.PARTS["eps16"])
    kept = powered_grid.known_cells(cells, ["fast_at", "fast_bat", "n_fgsm", "nu_at", "liet"])
    assert [c.name for c in kept] == [c.name for c in cells if c.method not in ("fgsm_pgi", "elle_a")]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["[powered] elle_a: not in tf_fastbat.methods.NAMES, its 1 cell(s) skipped",
                     "[powered] fgsm_pgi: not in tf_fastbat.methods.NAMES, its 4 cell(s) skipped"]


def fake_powered_cell(workdir, eps, sa, ra, val_robust, alignment, train_accuracy=None):
    """A finished powered cell: report.json (best = last) and a training_log.csv with the given curves."""
    train_accuracy = train_accuracy or [0.5] * len(val_robust)
    os.makedirs(workdir)
    result = {"clean_accuracy": sa, "num_examples": 1017, "robust_accuracy": {"pgd-50-2": {f"{eps}/255": ra}}}
    report = {"best_epoch": len(val_robust), "epochs": len(val_robust), "seconds_per_epoch": 40.0,
              "checkpoints": {"best": result, "last": result}}
    with open(os.path.join(workdir, "report.json"), "w") as out:
        json.dump(report, out)
    with open(os.path.join(workdir, "training_log.csv"), "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["epoch", "accuracy", "gradient_alignment", "val_robust_accuracy"])
        writer.writerows([e, train_accuracy[e], alignment[e], val_robust[e]] for e in range(len(val_robust)))


def test_powered_table_gaps_against_fast_bat_and_the_seed_spread(tmp_path):
    part = powered_grid.Part(8, ("fast_at", "fast_bat", "n_fgsm"), (0, 1, 2), 3)
    ra = {"fast_bat": (0.30, 0.32, 0.34), "fast_at": (0.20, 0.21, 0.22), "n_fgsm": (0.31, 0.33, 0.29)}
    sa = {"fast_bat": (0.40, 0.40, 0.40), "fast_at": (0.45, 0.46, 0.47), "n_fgsm": (0.40, 0.41, 0.42)}
    cells = powered_grid.part_cells(part)
    for cell in cells:
        fake_powered_cell(cell.workdir(str(tmp_path)), 8, sa[cell.method][cell.seed], ra[cell.method][cell.seed],
                          [0.1, 0.2, 0.25], [0.5, 0.9, 0.8])
    for seed, (aa, pgd) in enumerate(((0.18, 0.19), (0.20, 0.21))):  # AutoAttack on two of Fast-AT's seeds
        with open(os.path.join(str(tmp_path), f"fast_at_eps8_seed{seed}", "extra_eval.json"), "w") as out:
            json.dump({"last": {"autoattack": {"robust_accuracy": aa, "num_examples": 200},
                                "pgd_50_10_on_aa_subset": pgd}}, out)
    summaries = {c.name: powered_grid.summary(c, str(tmp_path)) for c in cells}
    rows = {line.split("|")[1].strip(): [v.strip() for v in line.strip("|").split("|")]
            for line in powered_grid.powered_table(summaries, part).splitlines() if line.startswith("| ") and
            "method" not in line}
    # By hand: Fast-BAT RA 32 +- 2; Fast-AT 21 +- 1 (gap -11 > 2 + 1); N-FGSM 31 +- 2 (gap -1 < 2 + 2).
    assert rows["Fast-AT"][2] == "21.0 ± 1.0" and rows["Fast-BAT"][2] == "32.0 ± 2.0"
    assert rows["Fast-AT"][5:7] == ["-11.0", "yes (3.0)"]
    assert rows["N-FGSM"][5:7] == ["-1.0", "no (4.0)"]
    # SA: Fast-BAT 40 +- 0; Fast-AT 46 +- 1 (gap +6 > 1); N-FGSM 41 +- 1 (gap +1, not > 1).
    assert rows["Fast-AT"][7:9] == ["+6.0", "yes (1.0)"] and rows["N-FGSM"][7:9] == ["+1.0", "no (1.0)"]
    assert rows["Fast-BAT"][5] == "(reference)"
    assert rows["Fast-AT"][9:12] == ["25.0 → 25.0", "none; none; none", "0.50 → 0.80"]
    assert rows["Fast-AT"][14] == "3"
    assert rows["Fast-AT"][15] == "-10.0, -11.0, -12.0" and rows["N-FGSM"][15] == "+1.0, +1.0, -5.0"
    assert rows["Fast-AT"][16] == "19.0 ± 1.4 [20.0 ± 1.4] (n = 200, 2 of 3 seeds)" and rows["N-FGSM"][16] == "-"


def test_collapse_epochs_and_the_figure_draw_the_logged_curves(tmp_path):
    assert powered_grid.collapse_epochs([0.15, 0.18, 0.20, 0.09, 0.02, 0.12]) == [4, 5]  # < 0.10 = half of 0.20
    assert powered_grid.collapse_epochs([0.03, 0.01, float("nan"), 0.04]) == []  # best under 5%: noise
    part = powered_grid.Part(16, ("fast_at", "fast_bat"), (0,), 6)
    curves = {"fast_at": ([0.15, 0.18, 0.20, 0.09, 0.02, 0.12], [0.9, 0.95, 0.6, 0.2, 0.05, 0.1],
                          [0.2, 0.25, 0.3, 0.6, 0.8, 0.85]),  # FGSM's training accuracy jumps as it collapses
              "fast_bat": ([0.12, 0.14, 0.15, 0.16, 0.16, 0.17], [0.9, 0.95, 0.97, 0.98, 0.98, 0.99],
                           [0.2, 0.22, 0.24, 0.26, 0.27, 0.28])}
    cells = powered_grid.part_cells(part)
    for cell in cells:
        fake_powered_cell(cell.workdir(str(tmp_path)), 16, 0.3, 0.15, *curves[cell.method])
    summaries = {c.name: powered_grid.summary(c, str(tmp_path)) for c in cells}
    figure = powered_grid.overfitting_figure(summaries, part, str(tmp_path / "co.png"))
    assert (tmp_path / "co.png").stat().st_size > 10_000
    robust_axis, train_axis, alignment_axis = figure.axes
    lines = {line.get_label(): line for line in robust_axis.get_lines()}
    np.testing.assert_allclose(lines["Fast-AT"].get_ydata(), [15, 18, 20, 9, 2, 12])
    np.testing.assert_allclose(lines["Fast-BAT"].get_xdata(), np.arange(1, 7))
    np.testing.assert_allclose(lines["Fast-AT: collapse"].get_xdata(), [4, 5])
    np.testing.assert_allclose(lines["Fast-AT: collapse"].get_ydata(), [9, 2])
    assert "Fast-BAT: collapse" not in lines
    trained = {line.get_label(): line for line in train_axis.get_lines()}
    np.testing.assert_allclose(trained["Fast-AT"].get_ydata(), [20, 25, 30, 60, 80, 85])
    np.testing.assert_allclose(trained["Fast-BAT"].get_ydata(), [20, 22, 24, 26, 27, 28])
    alignment = {line.get_label(): line for line in alignment_axis.get_lines()}
    np.testing.assert_allclose(alignment["Fast-AT"].get_ydata(), curves["fast_at"][1])
    np.testing.assert_allclose(alignment["Fast-AT: collapse"].get_ydata(), [0.2, 0.05])
    table = powered_grid.powered_table(summaries, part)
    assert "| Fast-AT |" in table and "| 20.0 → 12.0 | 4, 5 | 0.05 → 0.10 |" in table


def test_powered_grid_never_reruns_a_finished_cell_and_resumes_the_others(tmp_path, monkeypatch):
    cells = powered_grid.part_cells(powered_grid.PARTS["eps16"])[:3]
    output = str(tmp_path)
    fake_powered_cell(cells[0].workdir(output), 16, 0.3, 0.15, [0.1], [0.9])  # finished
    os.makedirs(os.path.join(cells[1].workdir(output), "backup"))  # killed: train.py resumes from its backup
    calls = []
    monkeypatch.chdir(tmp_path)  # main() moves to the repository root: restored after the test
    monkeypatch.setattr(reproduce.subprocess, "call", lambda command, **kwargs: calls.append(command) or 0)
    monkeypatch.setattr(powered_grid, "method_names", lambda: ["fast_at", "fast_bat", "n_fgsm"])
    powered_grid.main(["--part=eps16", "--stage=train", f"--output_dir={output}"])
    assert [c[c.index("-m") + 2:] for c in calls] == [cell.command(output, None)[3:] for cell in cells[1:]]
    assert all("--epochs=15" in c for c in calls)
    command_txt = (tmp_path / cells[1].name / "command.txt").read_text()
    assert f"--workdir={cells[1].workdir(output)}" in command_txt


def test_clean_accuracy_without_the_excluded_test_images_counts_by_hand():
    """Evaluator's clean check: accuracy on all images and on those not excluded, from one-hot logits."""
    import tensorflow as tf

    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], np.int64)
    predicted = np.array([0, 1, 2, 0, 4, 0, 6, 0, 8, 0], np.int64)  # wrong at 3, 5, 7, 9
    logits_fn = lambda x: tf.one_hot(tf.gather(tf.constant(predicted), tf.cast(x[:, 0, 0, 0], tf.int32)), 10)
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)  # the image carries its own index
    entry = {}
    reproduce.Evaluator(0, 1, excluded=(3, 4, 12))._clean_without(entry, logits_fn, x, labels)
    assert entry["clean"] == {"accuracy": 0.6, "num_examples": 10, "accuracy_without_excluded": 5 / 8,
                              "num_examples_without_excluded": 8}


def test_full_grid_runner_trains_measures_and_reports_a_tiny_cell(tmp_path, monkeypatch):
    """--part=full end to end on a tiny configuration: train (2 steps), the autoattack stage (AutoAttack on 4 test
    images, PGD-50-10 on 8, clean without the lossy images), the Table 1 report; a second train run skips it."""
    monkeypatch.chdir(tmp_path)
    output, results, figures = tmp_path / "runs", tmp_path / "results", tmp_path / "figures"
    common = ["--part=full", "--only=full_fast_at_eps8_seed0", f"--output_dir={output}", "--epochs=1",
              "--train_flags=--dataset=npz:../shared/data/cifar10_subset.npz,--steps_per_epoch=2,"
              "--es_num_examples=16,--eval_num_examples=32"]
    powered_grid.main(common + ["--stage=train"])
    workdir = output / "full_fast_at_eps8_seed0"
    report = json.loads((workdir / "report.json").read_text())
    assert report["epochs"] == 1 and report["checkpoints"]["last"]["num_examples"] == 32
    assert "pgd-20-1" in report["checkpoints"]["last"]["robust_accuracy"]
    archived = tmp_path / "archive" / "full_fast_at_eps8_seed0"
    records = {"command.txt", "config.json", "training_log.csv", "report.json", "report.md", "checkpoints/best.json",
               "training_curves.png", "ra_vs_eps.png"}
    powered_grid.main(common + ["--stage=archive", f"--archive_dir={tmp_path / 'archive'}"])
    assert archive_listing(archived) == records | {"checkpoints/best.keras", "checkpoints/last.keras"}  # AA to come
    assert (archived / "checkpoints" / "best.keras").read_bytes() == (workdir / "checkpoints" / "best.keras").read_bytes()
    powered_grid.main(common + ["--stage=autoattack", "--aa_examples=4", "--pgd_examples=8"])
    powered_grid.main(common + ["--stage=archive", f"--archive_dir={tmp_path / 'archive'}"])
    assert archive_listing(archived) == records | {"extra_eval.json"}  # measured: the checkpoints are not needed
    extra = json.loads((workdir / "extra_eval.json").read_text())
    assert set(extra) == {"best", "last"}
    for entry in extra.values():
        assert entry["autoattack"]["num_examples"] == 4 and entry["pgd_50_10"]["num_examples"] == 8
        assert entry["clean"]["num_examples"] == 1017 == entry["clean"]["num_examples_without_excluded"]
        assert entry["pgd_50_10"]["robust_accuracy"] <= entry["clean"]["accuracy"] + 0.5  # 8 of 1017 images
    text = (powered_grid.main(common + ["--stage=report", f"--results_dir={results}", f"--figures_dir={figures}"])
            or (results / "full_cifar10.md").read_text())
    row = next(line for line in text.splitlines() if line.startswith("| Fast-AT | 8/255"))
    values = [v.strip() for v in row.strip("|").split("|")]
    best = extra["best"]  # the first table is the early-stopped models'
    assert values[2] == f"{100 * report['checkpoints']['best']['clean_accuracy']:.2f}"
    assert values[5] == f"{100 * best['pgd_50_10']['robust_accuracy']:.2f}"
    assert values[6] == f"{100 * best['autoattack']['robust_accuracy']:.2f}"
    assert values[9:11] == ["45.47", "41.97"]  # the paper's Fast-AT at 8/255, as restated in issue 20
    assert (figures / "powered_co_full_eps8.png").stat().st_size > 10_000
    calls = []
    monkeypatch.setattr(reproduce.subprocess, "call", lambda command, **kwargs: calls.append(command) or 0)
    powered_grid.main(common + ["--stage=train"])
    assert calls == []  # finished: never trained again
    check_packaged_model(tmp_path, monkeypatch, output, report, extra)


def test_a_cell_whose_workdir_was_not_kept_is_reported_from_its_shipped_models_card(tmp_path):
    """Fast-BAT at 8/255 ships as pretrained:cifar10_fast_bat_eps8 but its workdir is gone: Table 1 reads its
    figures from the card (marked †), for best and, being the last epoch, for last; the seed tables leave it out."""
    card = json.loads((ROOT / "tf_fastbat" / "pretrained" / "cifar10_fast_bat_eps8.json").read_text())
    part = powered_grid.PARTS["full_eps8"]
    cells = [c for c in powered_grid.part_cells(part) if c.method == "fast_bat"]
    text = powered_grid.report(cells, str(tmp_path / "runs"), [part], str(tmp_path / "results"),
                               str(tmp_path / "figures"), powered_grid.FULL_STEM)
    rows = [[v.strip() for v in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| Fast-BAT† | 8/255")]
    accuracy = card["accuracy"]
    expected = [f"{100 * accuracy['clean']['accuracy']:.2f}", "-", f"{100 * accuracy['pgd_20_1']['accuracy']:.2f}",
                f"{100 * accuracy['pgd_50_10']['accuracy']:.2f}", f"{100 * accuracy['autoattack_standard']['accuracy']:.2f}",
                "-", "", "48.74", "44.89", str(card["training"]["best_epoch"])]
    assert card["training"]["best_epoch"] == card["training"]["epochs"] == 10
    assert [row[2:12] for row in rows] == [expected, expected]  # the early-stopped and the last table
    assert text.count("† From the shipped model's card (pretrained:cifar10_fast_bat_eps8)") == 2
    assert "| Fast-BAT |" not in text  # not in the seed table (no curves)


def archive_listing(folder) -> set:
    """Every file under `folder`, as paths relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_archive_of_a_cell_in_training_keeps_its_newest_backup_and_checkpoints(tmp_path):
    """A cell stopped mid-training: its records, both checkpoints and only the newest backup step are archived
    (what exact resume reads), never train.log; an older archive of the cell is replaced, not merged."""
    cell = powered_grid.part_cells(powered_grid.PARTS["full_eps8"])[0]
    workdir = tmp_path / "runs" / cell.name
    from tf_fastbat import backup

    files = {"config.json": "{}", "command.txt": "train", "training_log.csv": "epoch\n0\n", "train.log": "bars",
             "checkpoints/best.json": "{}", "checkpoints/best.keras": "b", "checkpoints/last.keras": "l"}
    for name, text in files.items():
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        (workdir / name).write_text(text)
    for step, value in ((352, 1.0), (704, 2.0)):  # two real backups, as training writes them
        backup.write(str(workdir / "backup"), step, {"w": np.array([value], np.float32)}, {"step": step})
    stale = tmp_path / "archive" / cell.name / "backup" / "step-0000000001" / "state"
    stale.parent.mkdir(parents=True)
    stale.write_text("stale")
    assert powered_grid.archive([cell], str(tmp_path / "runs"), str(tmp_path / "archive"), ("best", "last")) == [cell.name]
    assert archive_listing(tmp_path / "archive" / cell.name) == {
        "config.json", "command.txt", "training_log.csv", "checkpoints/best.json", "checkpoints/best.keras",
        "checkpoints/last.keras", "backup/step-0000000704/variables.npz", "backup/step-0000000704/manifest.json"}
    resumed = backup.newest(str(tmp_path / "archive" / cell.name / "backup"), warn=pytest.fail)  # what resume reads
    assert resumed.state == {"step": 704} and resumed.arrays["w"].tolist() == [2.0]
    assert [p.name for p in (tmp_path / "archive").iterdir()] == [cell.name]  # no staging folder left


def check_packaged_model(tmp_path, monkeypatch, output, report, extra):
    """--stage=pretrained on the tiny cell: the model file and its card, then `pretrained:NAME` through the
    library and the tools' resolution, from a package folder that holds only this model."""
    import keras
    import tensorflow as tf

    from tf_fastbat import artifacts, evaluate, models, pretrained
    from tf_fastbat.errors import UsageError

    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setattr(powered_grid, "PRETRAINED", {"tiny_fast_at": ("full_fast_at_eps8_seed0", "best")})
    powered_grid.main(["--part=full", f"--output_dir={output}", "--stage=pretrained", f"--pretrained_dir={folder}"])
    card = json.loads((folder / "tiny_fast_at.json").read_text())
    best = report["checkpoints"]["best"]
    assert card["accuracy"]["clean"] == {"accuracy": best["clean_accuracy"], "num_examples": 32}
    assert card["accuracy"]["pgd_20_1"]["accuracy"] == best["robust_accuracy"]["pgd-20-1"]["8/255"]
    assert card["accuracy"]["autoattack_standard"] == {"accuracy": extra["best"]["autoattack"]["robust_accuracy"],
                                                       "num_examples": 4}
    assert card["settings"]["dataset"] == "cifar10" and card["settings"]["method"] == "fast_at"
    assert "workdir" not in card["settings"] and card["settings"]["eps"] == 8.0
    with np.load(ROOT.parent / "shared" / "data" / "cifar10_subset.npz") as data:  # the run's own test images
        x, y = data["x_test"][:500].astype(np.float32) / 255.0, data["y_test"][:500]
    trained = keras.models.load_model(output / "full_fast_at_eps8_seed0" / "checkpoints" / "best.keras", compile=False)
    by_hand = float(np.mean(np.argmax(trained(tf.constant(x), training=False).numpy(), 1) == y))
    assert card["accuracy"]["clean_first_500"] == {"accuracy": by_hand, "num_examples": 500}
    monkeypatch.setattr(pretrained, "FOLDER", str(folder))
    assert pretrained.names() == ("tiny_fast_at",)
    assert card["sha256"] == pretrained.sha256(str(folder / "tiny_fast_at.keras"))
    loaded = models.load("pretrained:tiny_fast_at")
    for a, b in zip(loaded.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    artifact = artifacts.resolve("pretrained:tiny_fast_at")
    assert (artifact.kind, artifact.checkpoint, artifact.label) == ("keras", "pretrained", "tiny_fast_at")
    assert evaluate.read_config(artifact)["dataset"] == "cifar10"
    assert evaluate.output_paths(artifact, None, None)["report"] == os.path.join(
        os.getcwd(), "runs", "evaluate", "tiny_fast_at", "evaluation-tiny_fast_at.json")
    with pytest.raises(UsageError, match="^checkpoint=pretrained:nope: no such pretrained model; shipped: "
                                         "pretrained:tiny_fast_at$"):
        artifacts.resolve("pretrained:nope", "checkpoint")
