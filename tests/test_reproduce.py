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
                "dataset": flags.FLAGS.dataset, "eval_attack_step": flags.FLAGS.eval_attack_step,
                "eval_restarts": flags.FLAGS.eval_restarts})
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
        assert (flags["eval_attack_step"], flags["eval_restarts"]) == (50, 10)  # PGD-50-10
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
