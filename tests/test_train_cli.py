"""The training command end to end (subprocesses): bad input, a short run's artifacts, a NaN loss (resuming a
stopped run: test_resume.py)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import BUNDLED_SLICE, ROOT

TINY = [f"--dataset=npz:{BUNDLED_SLICE}", "--width_multiplier=0.125", "--batch_size=32", "--steps_per_epoch=2",
        "--es_pgd_steps=2", "--es_pgd_restarts=1", "--es_num_examples=32", "--eval_pgd_steps=3",
        "--eval_pgd_restarts=1", "--eval_num_examples=64", "--tensorboard=false"]


def train(*args, check=True, timeout=600):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-m", "tf_fastbat.train", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("flag,message", [
    ("--eps=0.03", "--eps=0.03: eps and step sizes are in 1/255 units"),
    ("--attack_lr=0.5", "--attack_lr=0.5"),
    ("--dataset=npz:/nonexistent/data.npz", "/nonexistent/data.npz: file not found"),
    ("--val_ratio=1.5", "--val_ratio=1.5"),
    ("--lmbda=-1", "--lmbda=-1: must be >= 0"),
    ("--backup_every_steps=-1", "--backup_every_steps=-1: must be >= 0"),
    ("--backup_every_seconds=-5", "--backup_every_seconds=-5: must be >= 0"),
    ("--method=liet --liet_mask_ratio=0.5,0.1", "--liet_mask_ratio=0.5,0.1: give r_min,r_max"),
    ("--method=liet --attack_lr=4", "--attack_lr=4: --method=liet does not take it"),
    ("--method=elle_a --elle_optimizer_steps=0", "--elle_optimizer_steps=0: must be a whole number >= 1"),
])
def test_bad_input_gets_one_line_naming_the_flag(tmp_path, flag, message):
    result = train(f"--workdir={tmp_path}", "--dataset=npz:" + str(BUNDLED_SLICE), *flag.split(), check=False,
                   timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "tf_fastbat.train: error" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_method_is_refused_by_the_flag_parser(tmp_path):
    result = train(f"--workdir={tmp_path}", "--method=fgsm", check=False, timeout=120)
    assert result.returncode != 0 and "--method" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # end to end: a training subprocess
def test_short_fast_bat_run_writes_checkpoints_log_and_report(tmp_path):
    result = train(f"--workdir={tmp_path}", "--method=fast_bat", "--epochs=2", f"--export_dir={tmp_path / 'exports'}",
                   *TINY)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["robust_accuracy"]) == {"pgd-3-1"} and set(report["robust_accuracy"]["pgd-3-1"]) == {"8/255"}
    assert report["num_examples"] == 64 and 0 <= report["robust_accuracy"]["pgd-3-1"]["8/255"] <= report[
        "clean_accuracy"] <= 1
    assert report["method"]["lmbda"] == 10.0 and report["method"]["eps"] == pytest.approx(8 / 255)
    for name in ("best.keras", "last.keras", "best.json"):
        assert (tmp_path / "checkpoints" / name).exists()
    assert "chance level 10% (10 classes)" in result.stdout  # the reading guide beside the results table
    # 2,000 bundled images, 10% held out; early stopping attacks --es_num_examples=32 of the 200
    assert "Trained on 1,800 images (200 more held out, of which early stopping attacked the first 32)" in result.stdout
    for figure in ("training_curves.png", "ra_vs_eps.png"):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "training_log.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"val_robust_accuracy", "val_clean_accuracy", "epoch_seconds", "learning_rate",
            "gradient_alignment"} <= set(rows[0])
    assert "| best |" in result.stdout
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["method"] == "fast_bat" and config["eps"] == 8.0
    versions = sorted(p.name for p in (tmp_path / "exports" / "tf_fastbat").iterdir() if p.name.isdigit())
    assert versions == ["1", "2"]  # last, then best (the newest, served by default)
    assert all((tmp_path / "exports" / "tf_fastbat" / v / "saved_model.pb").exists() for v in versions)


@pytest.mark.slow  # end to end: a training subprocess
def test_nan_loss_stops_with_one_line_and_keeps_no_nan_checkpoint(tmp_path):
    result = train(f"--workdir={tmp_path}", "--method=fast_at", "--epochs=2", "--lr_max=1e12", "--backup_every_steps=1",
                   *TINY, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "tf_fastbat.train: error" in line]
    assert len(lines) == 1 and "training loss became" in lines[0] and "--lr_max" in lines[0]
    assert "Traceback" not in result.stderr
    from tf_fastbat import models

    for path in (tmp_path / "checkpoints").glob("*.keras"):  # whatever was saved before the NaN is finite
        assert all(np.isfinite(w).all() for w in models.load(str(path)).get_weights())
    from tf_fastbat import backup

    for folder in backup.folders(str(tmp_path / "backup")):  # and so is every backup a rerun would resume from
        assert all(np.isfinite(a).all() for a in backup.read(folder).arrays.values() if a.dtype.kind == "f")
