"""Progress of long measurements: PGD reports inside every restart, the lines give the time spent and a correct ETA
(a fake clock), and each finished run ends with its robust accuracy and seconds."""

import io
import re

import numpy as np
import tensorflow as tf

from tf_fastbat import evaluation
from tf_fastbat.attacks.base import Attack, Outcome, restart_progress
from tf_fastbat.attacks.pgd import PGD, PGDAttack
from tf_fastbat.progress import ProgressBars, duration

SHAPE = (2, 2, 3)


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def linear_problem(n: int = 40, seed: int = 0):
    """A 3-class linear model and images it mostly classifies right, some of them breakable at eps 0.05."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(12, 3)).astype(np.float32)
    x = rng.uniform(0.1, 0.9, size=(n, *SHAPE)).astype(np.float32)
    y = np.argmax(x.reshape(n, -1) @ w, axis=1)
    y[:4] = (y[:4] + 1) % 3  # a few wrong from the start
    w_t = tf.constant(w)
    return (lambda images: tf.reshape(images, [-1, 12]) @ w_t), x, y


def test_pgd_reports_several_times_inside_every_restart_of_a_multi_batch_input():
    logits_fn, x, y = linear_problem()
    calls = []
    robust = PGD(logits_fn, batch_size=8).robust_mask(x, y, 0.05, steps=3, restarts=3, seed=0,
                                                      progress=lambda *call: calls.append(call))
    clean = int((np.argmax(x.reshape(len(x), -1) @ _weights(logits_fn), 1) == y).sum())
    for restart in range(3):
        mine = [(done, attacked) for r, done, attacked in calls if r == restart]
        attacked = mine[0][1]
        assert mine[0][0] == 0  # each restart reports its start...
        assert [d for d, _ in mine[1:]] == list(range(8, attacked, 8)) + [attacked]  # ...and every batch of 8
        assert len(mine) > 2 and {a for _, a in mine} == {attacked}
    assert calls[0][2] == clean and 0 < robust.sum() < clean  # restart 0 attacks the correctly classified


def _weights(logits_fn) -> np.ndarray:
    """The linear model's matrix, read back through the function (identity images)."""
    eye = np.eye(12, dtype=np.float32).reshape(12, *SHAPE)
    return logits_fn(tf.constant(eye)).numpy()


def test_the_attacks_progress_is_monotone_from_zero_to_its_total_and_counts_each_restart():
    logits_fn, x, y = linear_problem()
    calls = []
    PGDAttack(steps=3, restarts=3, batch_size=8).attack(logits_fn, x, y, 0.05, lambda *call: calls.append(call))
    done = [d for _, d, _ in calls]
    wrong = int((np.argmax(x.reshape(len(x), -1) @ _weights(logits_fn), 1) != y).sum())
    assert {stage for stage, _, _ in calls} == {"pgd-3-3"} and {t for _, _, t in calls} == {3 * len(x)}
    assert done[0] == 3 * wrong  # examples misclassified already are done for all 3 restarts from the start
    assert done[-1] == 3 * len(x) and all(a <= b for a, b in zip(done, done[1:]))
    assert len(done) > 3 * 3  # several reports per restart, not one per restart


def test_the_attacks_progress_counts_the_example_restarts_still_to_attack_exactly():
    """After each report, total - done is the PGD work left: this restart's unattacked examples plus, for every
    later restart, the examples still robust (brute force over the robust masks of each restart)."""
    logits_fn, x, y = linear_problem()
    restarts, raw, mapped = 3, [], []
    progress = restart_progress(lambda *call: mapped.append(call[1]), "pgd", len(x), restarts)
    PGD(logits_fn, batch_size=8).robust_mask(x, y, 0.05, 3, restarts, seed=0,
                                             progress=lambda *call: (raw.append(call), progress(*call)))
    for (restart, done, attacked), reported in zip(raw, mapped):
        # attacked = robust at this restart's start; all of them are attacked again by each later restart at most
        left = (attacked - done) + attacked * (restarts - restart - 1)
        assert restarts * len(x) - reported == left


def test_a_restart_with_nothing_left_to_attack_still_completes_the_progress():
    logits_fn, x, y = linear_problem()
    calls = []
    PGDAttack(steps=5, restarts=4, batch_size=64).attack(logits_fn, x, y, 1.0, lambda *call: calls.append(call))
    assert calls[-1][1:] == (4 * len(x), 4 * len(x))  # eps 1 breaks everything at restart 0; later restarts report
    assert [d for _, d, _ in calls].count(4 * len(x)) == 3  # complete from restart 1's start: restarts 1-3 report
    out = io.StringIO()
    bars = ProgressBars("pgd-5-4 at eps 255/255 on 40 examples", out, dynamic=False)
    for call in calls:
        bars(*call)
    lines = out.getvalue().splitlines()  # the repeated complete reports print nothing more
    assert len(lines) == 2 and lines[1].startswith("  pgd-5-4: 160/160 (100%) in ")


def test_progress_lines_give_the_time_spent_since_the_start_and_the_eta_at_the_stages_rate():
    clock, out = FakeClock(), io.StringIO()
    bars = ProgressBars("pgd-50-10 at eps 8/255 on 100 examples", out, clock, interval=0.0, dynamic=False)
    clock.now = 5.0
    bars("pgd-50-10", 0, 400)  # the attack starts reporting 5 s after it started
    clock.now = 25.0
    bars("pgd-50-10", 100, 400)  # 100 done in 20 s since its first report... and 25 s since the start
    clock.now = 105.0
    bars("pgd-50-10", 400, 400)
    lines = out.getvalue().splitlines()
    assert lines[0] == "pgd-50-10 at eps 8/255 on 100 examples"  # the stage is named in the title already
    # The rate counts from the stage's start (construction): 100 in 25 s, so 300 left take 75 s.
    assert lines[1] == "  pgd-50-10: 100/400 (25%) - 25.0 s spent - ETA 1 min 15 s"
    assert lines[2] == "  pgd-50-10: 400/400 (100%) in 1 min 45 s"


def test_the_eta_leaves_out_the_first_blocks_tracing_once_a_later_report_gives_the_steady_rate():
    clock, out = FakeClock(), io.StringIO()
    bars = ProgressBars("t", out, clock, interval=0.0, dynamic=False)
    bars("apgd-t", 0, 100)
    for now, done in ((20.0, 10), (21.0, 20), (22.0, 30)):  # 20 s for the first block (tracing), then 1 s each
        clock.now = now
        bars("apgd-t", done, 100)
    lines = out.getvalue().splitlines()
    assert lines[1].endswith("ETA 3 min 00 s")  # 10 in 20 s: 90 left take 180 s
    assert lines[3].endswith("ETA 7.0 s")  # 20 more in the 2 s since the first block: 70 left take 7 s


def test_a_run_whose_only_report_comes_at_the_end_prints_the_time_it_took_not_zero():
    clock, out = FakeClock(), io.StringIO()
    bars = ProgressBars("title", out, clock, dynamic=False)
    clock.now = 100.0
    bars("pgd-20-1", 32, 32)
    assert out.getvalue().splitlines()[-1] == "  pgd-20-1: 32/32 (100%) in 1 min 40 s"


def test_each_stage_counts_from_the_end_of_the_previous_one_and_a_log_file_gets_few_lines():
    clock, out = FakeClock(), io.StringIO()
    bars = ProgressBars("autoattack", out, clock, interval=30.0, dynamic=False)
    bars("apgd-ce", 0, 10)
    for second in range(1, 11):
        clock.now = float(second)
        bars("apgd-ce", second, 10)
    clock.now = 12.0
    bars("apgd-t", 0, 4)
    clock.now = 20.0
    bars("apgd-t", 4, 4)
    lines = out.getvalue().splitlines()
    assert lines == ["autoattack: apgd-ce", "  apgd-ce: 2/10 (20%) - 2.0 s spent - ETA 8.0 s",
                     "  apgd-ce: 10/10 (100%) in 10.0 s", "autoattack: apgd-t", "  apgd-t: 4/4 (100%) in 10.0 s"]


def test_a_terminal_line_is_redrawn_in_place_and_ends_with_the_stage():
    clock, out = FakeClock(), io.StringIO()
    bars = ProgressBars("t", out, clock, dynamic=True)
    for done in (0, 1, 2):
        clock.now = float(done)
        bars("s", done, 2)
    assert out.getvalue() == ("t: s\n\r  s: 0/2 (0%) - 0.0 s spent - ETA ?\r  s: 1/2 (50%) - 1.0 s spent - ETA 1.0 s"
                              "\r  s: 2/2 (100%) in 2.0 s\n")


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0.04, 7.5, 59.9, 60, 125, 3600 + 125, float("inf"))] == [
        "0.0 s", "7.5 s", "59.9 s", "1 min 00 s", "2 min 05 s", "1 h 02 min", "?"]


class ScriptedAttack(Attack):
    """Takes `seconds` of the fake clock and keeps the examples of `mask`."""

    name = "scripted"

    def __init__(self, clock: FakeClock, seconds: float, mask: np.ndarray):
        self.clock, self.seconds, self.mask = clock, seconds, mask

    def settings(self):
        return {}

    def attack(self, logits_fn, x, y, eps, progress=None):
        self.clock.now += self.seconds
        if progress is not None:
            progress(self.name, len(x), len(x))
        return Outcome(self.mask.copy())


def test_each_finished_run_ends_with_a_line_of_its_robust_accuracy_and_the_seconds_it_took():
    clock, lines, bars = FakeClock(), [], []
    x = np.zeros((8, *SHAPE), np.float32)
    y = np.zeros(8, np.int64)
    mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)  # 3 of 8 robust
    attack = ScriptedAttack(clock, 7.5, mask)

    def progress(title):
        bars.append(ProgressBars(title, io.StringIO(), clock, dynamic=False))
        return bars[-1]

    result = evaluation.robustness(lambda t: tf.zeros([tf.shape(t)[0], 2]), x, y, [4 / 255, 8 / 255], [attack],
                                   progress=progress, log=lines.append, clock=clock)
    assert lines == ["scripted at eps 4/255: robust accuracy 37.50% (7.5 s)",
                     "scripted at eps 8/255: robust accuracy 37.50% (7.5 s)"]
    assert result["attack_seconds"]["scripted"] == {"total": 15.0, "4/255": 7.5, "8/255": 7.5}
    assert [b.title for b in bars] == ["scripted at eps 4/255 on 8 examples", "scripted at eps 8/255 on 8 examples"]
    assert bars[0].stream.getvalue().splitlines()[-1] == "  scripted: 8/8 (100%) in 7.5 s"  # made as the run began


def test_a_real_pgd_runs_closing_line_has_the_format_and_nonnegative_seconds():
    logits_fn, x, y = linear_problem()
    lines = []
    result = evaluation.robustness(logits_fn, x, y, [0.05], [PGDAttack(3, 2, batch_size=16)], log=lines.append)
    (line,) = lines
    match = re.fullmatch(r"pgd-3-2 at eps ([\d.]+)/255: robust accuracy ([\d.]+)% \(([\d.]+) s\)", line)
    assert match and float(match.group(1)) == 0.05 * 255
    assert float(match.group(2)) == round(100 * result["robust_accuracy"]["pgd-3-2"]["12.75/255"], 2)
    assert float(match.group(3)) >= 0


def test_the_early_stopping_check_ends_each_epoch_with_its_figures_and_the_best_epoch_so_far(tmp_path, capsys):
    import keras

    from tf_fastbat.callbacks import RobustValidation

    logits_fn, x, y = linear_problem()
    weights = _weights(logits_fn)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(3, use_bias=False)])
    model.layers[-1].set_weights([weights])
    check = RobustValidation(model, str(tmp_path), x, y, 0.05, steps=3, restarts=1, seed=0, batch_size=16,
                             verbose=True)
    check.set_params({"verbose": 2})
    logs = [{}, {}]
    check.on_epoch_end(0, logs[0])
    check.on_epoch_end(1, logs[1])  # the same weights: not strictly better, epoch 1 stays the best
    closing = [line for line in capsys.readouterr().out.splitlines() if "held-out clean accuracy" in line]
    clean = np.mean(np.argmax(x.reshape(len(x), -1) @ weights, 1) == y)
    robust = logs[0]["val_robust_accuracy"]
    assert logs[1]["val_robust_accuracy"] == robust and robust < clean
    for epoch, line in enumerate(closing, 1):
        match = re.fullmatch(rf"early stopping after epoch {epoch}: held-out clean accuracy {100 * clean:.2f}%, "
                             rf"pgd-3-1 robust accuracy at eps 12.75/255 {100 * robust:.2f}% \(([\d.]+) s\); "
                             rf"best epoch 1 \({100 * robust:.2f}%\)", line)
        assert match and float(match.group(1)) >= 0, line
    assert len(closing) == 2
