"""A training run stopped mid-epoch and rerun with the same command ends where an unbroken run of that command
ends: the same weights (bit for bit, CPU with op determinism), training-log rows, best epoch and test figures.

The chains start `python -m tf_fastbat.train` (two workers on loopback for the multi-worker case), wait for a step
backup chosen at random (seeded; the seed and choice are printed, and TF_FASTBAT_RESUME_SEED replays a failure),
signal or kill the process, rerun the same command (stopping it again), optionally truncate the newest backup, and
compare the end with the unbroken run's files. All runs of a group go at once: each process is mostly tracing
on one core. The pieces underneath (backup files, the data stream, the backup schedule, the signals) are tested
first, without training.
"""

import csv
import functools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

from conftest import BUNDLED_SLICE, ROOT

STEPS, EPOCHS, EVERY = 8, 2, 2
TINY = [f"--dataset=npz:{BUNDLED_SLICE}", "--width_multiplier=0.125", "--batch_size=32", f"--steps_per_epoch={STEPS}",
        f"--epochs={EPOCHS}", f"--backup_every_steps={EVERY}", "--backup_every_seconds=0", "--es_pgd_steps=2",
        "--es_pgd_restarts=1", "--es_num_examples=32", "--eval_pgd_steps=2", "--eval_pgd_restarts=1",
        "--eval_num_examples=32", "--tensorboard=false"]
# Step backups inside each epoch (global steps 8 and 16 are epoch ends). A SIGTERM is answered at the next step
# boundary, so not after an epoch's last step backup, or the answer could be the epoch-end backup.
FIRST_EPOCH = list(range(EVERY, STEPS, EVERY))
SECOND_EPOCH = [STEPS + s for s in FIRST_EPOCH]


# ----------------------------------------------------------------------------------------------------------------
# The pieces, without training: backups on disk and the data stream.

def test_backups_keep_the_newest_two_and_a_corrupt_newest_one_falls_back_to_the_previous(tmp_path):
    from tf_fastbat import backup

    def arrays(step):
        return {"00000": np.full((3, 5), step, np.float32), "00001": np.array(step, np.int64)}

    directory = tmp_path / "backup"
    for step in (2, 4, 6):
        backup.write(str(directory), step, arrays(step), {"epoch": step})
    os.makedirs(directory / ".partial-killed")  # what a write killed before its rename leaves
    (directory / ".partial-killed" / "manifest.json").write_text("{")
    assert sorted(os.listdir(directory)) == [".partial-killed", "step-0000000004", "step-0000000006"]
    warnings = []
    found = backup.newest(str(directory), warnings.append)
    assert warnings == [] and found.state == {"epoch": 6} and found.path == str(directory / "step-0000000006")
    assert all(np.array_equal(found.arrays[k], v) for k, v in arrays(6).items())

    def truncate(folder):
        path = folder / "variables.npz"
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])

    def flip_a_value_byte(folder):
        data = bytearray((folder / "variables.npz").read_bytes())
        data[data.find(np.float32(6).tobytes() * 15) + 5] ^= 0xFF
        (folder / "variables.npz").write_bytes(bytes(data))

    def drop_manifest(folder):
        os.remove(folder / "manifest.json")

    def cut_manifest(folder):
        (folder / "manifest.json").write_text((folder / "manifest.json").read_text()[:40])

    for corrupt in (truncate, flip_a_value_byte, drop_manifest, cut_manifest):
        copy = tmp_path / corrupt.__name__
        shutil.copytree(directory, copy)
        corrupt(copy / "step-0000000006")
        warnings = []
        found = backup.newest(str(copy), warnings.append)
        assert found.state == {"epoch": 4}, corrupt.__name__
        assert len(warnings) == 1 and warnings[0].startswith(f"backup {copy / 'step-0000000006'} is unreadable (") \
            and warnings[0].endswith("); using the previous one"), warnings
        truncate(copy / "step-0000000004")
        with pytest.raises(backup.BackupError, match=f"no readable backup in {copy}"):
            backup.newest(str(copy), warnings.append)
    assert backup.newest(str(tmp_path / "none"), warnings.append) is None
    os.makedirs(tmp_path / "keras")
    (tmp_path / "keras" / "training_metadata.json").write_text('{"epoch": 3}')
    with pytest.raises(backup.BackupError, match="Keras BackupAndRestore backup of an older tf_fastbat"):
        backup.newest(str(tmp_path / "keras"), warnings.append)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_the_training_stream_started_at_any_batch_is_the_unbroken_stream_from_there(drop_remainder):
    from tf_fastbat.data import pipeline

    x = np.random.default_rng(0).integers(0, 256, (45, 8, 8, 3), dtype=np.uint8)
    y = np.arange(45)  # labels name the examples
    per_epoch = 2 if drop_remainder else 3
    unbroken = [(a.numpy(), b.numpy()) for a, b in pipeline.array_stream(x, y, 16, 5, 0, drop_remainder).take(
        4 * per_epoch)]
    epochs = [np.concatenate([b for _, b in unbroken[e * per_epoch:(e + 1) * per_epoch]]) for e in range(4)]
    for labels in epochs:  # each epoch: every example once (32 of them when the remainder is dropped)
        assert len(set(labels)) == len(labels) == (32 if drop_remainder else 45)
    assert len({tuple(labels) for labels in epochs}) == 4, "each epoch has its own order"
    for start in range(1, 3 * per_epoch + 1):
        resumed = pipeline.array_stream(x, y, 16, 5, start, drop_remainder).take(len(unbroken) - start)
        for (images, labels), (want_images, want_labels) in zip(resumed, unbroken[start:]):
            assert np.array_equal(labels.numpy(), want_labels) and np.array_equal(images.numpy(), want_images)


def test_first_sigterm_or_sigint_is_noted_and_a_second_one_acts_at_once():
    from tf_fastbat import interrupt

    # Python's own SIGINT handler, whatever this process inherited (a shell's background job starts with SIGINT
    # ignored, and Python then keeps it ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stop = interrupt.StopRequest()
        with stop.installed():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert stop.signum == signal.SIGINT, "the first SIGINT is noted, not raised"
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1.0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert interrupt.exit_status(signal.SIGTERM) == 143


class FakeRun:
    """What StepBackup reads of a run, without a model: one array, the position in the state."""

    steps_per_epoch = 5

    def arrays(self):
        return {"00000": np.zeros(3, np.float32)}

    def metrics(self):
        return np.zeros((1, 4))

    def state(self, position, epoch_seconds):
        return {"epoch": position.epoch, "step": position.step}

    def best_file(self, state):
        return {}


class FakeTimer:
    def elapsed(self):
        return 0.0


def test_backups_every_n_steps_every_t_seconds_and_at_epoch_ends(tmp_path):
    """Two epochs of 5 steps, each step 4 s on a fake clock: the backups written are the expected global steps."""
    from tf_fastbat import interrupt, resume

    def backed_up(every_steps, every_seconds):
        directory = tmp_path / f"{every_steps}-{every_seconds}"
        now = [0.0]
        callback = resume.StepBackup(FakeRun(), str(directory), epochs=2, chief=True, every_steps=every_steps,
                                     every_seconds=every_seconds, restored=resume.Restored(), timer=FakeTimer(),
                                     stop=interrupt.StopRequest(), clock=lambda: now[0])
        written = []
        for epoch in range(2):
            callback.on_epoch_begin(epoch)
            for batch in range(5):
                now[0] += 4.0
                callback.on_train_batch_end(batch)
                written += [int(n[5:]) for n in os.listdir(directory) if n.startswith("step-")] if directory.exists() \
                    else []
            callback.on_epoch_end(epoch)
            written += [int(n[5:]) for n in os.listdir(directory) if n.startswith("step-")]
        return sorted(set(written))

    assert backed_up(0, 0) == [5, 10]  # epoch ends only
    assert backed_up(2, 0) == [2, 4, 5, 6, 8, 10]  # global steps; 5 and 10 are epoch ends
    # 10 s: due at step 3 (12 s); the epoch end (step 5, 20 s) saves and restarts the interval: step 8 (32 s).
    assert backed_up(0, 10) == [3, 5, 8, 10]


# ----------------------------------------------------------------------------------------------------------------
# The training command.

def environment(extra=None):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""})
    env.update(extra or {})
    return env


def start(workdir, args, log_name, extra_env=None) -> subprocess.Popen:
    os.makedirs(str(workdir), exist_ok=True)
    log = open(os.path.join(str(workdir), log_name), "w")
    return subprocess.Popen([sys.executable, "-m", "tf_fastbat.train", f"--workdir={workdir}", *args], cwd=ROOT,
                            env=environment(extra_env), stdout=subprocess.DEVNULL, stderr=log)


def wait(process: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail("training subprocess timed out")


def stderr_of(workdir, log_name) -> str:
    return open(os.path.join(str(workdir), log_name)).read()


def train(workdir, args, log_name="stderr.txt") -> str:
    """Run the command to the end; its stderr."""
    status = wait(start(workdir, args, log_name))
    text = stderr_of(workdir, log_name)
    assert status == 0, text[-3000:]
    return text


def backup_folder(workdir, step: int) -> str:
    return os.path.join(str(workdir), "backup", f"step-{step:010d}")


def wait_for_file(path: str, processes, timeout: float = 300) -> None:
    """Until `path` exists (a backup's manifest appears when its folder is renamed into place)."""
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if any(p.poll() is not None for p in processes):
            pytest.fail(f"a training process ended before {path} appeared")
        if time.time() > deadline:
            pytest.fail(f"no {path} after {timeout} s")
        time.sleep(0.01)


def newest_backup(workdir):
    """(path, recorded state) of the newest committed backup."""
    folder = sorted(n for n in os.listdir(os.path.join(str(workdir), "backup")) if n.startswith("step-"))[-1]
    path = os.path.join(str(workdir), "backup", folder)
    with open(os.path.join(path, "manifest.json")) as f:
        return path, json.load(f)["state"]


def choose(label: str, steps):
    """(step after whose backup the run is stopped, extra delay in seconds), seeded per stop and printed."""
    seed = int(os.environ.get("TF_FASTBAT_RESUME_SEED", zlib.crc32(label.encode())))
    rng = random.Random(seed)
    step, delay = rng.choice(steps), rng.uniform(0.0, 0.2)
    print(f"{label}: TF_FASTBAT_RESUME_SEED={seed}: stopping after the step-{step} backup + {delay:.3f} s")
    return step, delay


def stop(workdir, args, how: str, steps, log_name: str) -> dict:
    """Run the command (fresh, or resuming) and stop it: `how` is "sigterm" or "sigkill" a random delay after a
    random step backup of `steps`, or "sigkill_epoch_end" as soon as the first epoch's early-stopping checkpoint is
    written (before that epoch's backup). What the assertions need."""
    process = start(workdir, args, log_name)
    best = os.path.join(str(workdir), "checkpoints", "best.json")
    if how == "sigkill_epoch_end":
        wait_for_file(best, [process])
        chosen = "after the first best.json"
    else:
        step, delay = choose(f"{workdir.name}-{log_name}", steps)
        wait_for_file(os.path.join(backup_folder(workdir, step), "manifest.json"), [process])
        time.sleep(delay)
        chosen = f"after the step-{step} backup + {delay:.3f} s"
    process.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    status = wait(process)
    newest, state = newest_backup(workdir)
    return {"how": how, "chosen": chosen, "status": status, "stderr": stderr_of(workdir, log_name),
            "newest": newest, "state": state, "stale_best": os.path.exists(best)}


def truncate_newest(workdir) -> str:
    newest, _ = newest_backup(workdir)
    arrays = os.path.join(newest, "variables.npz")
    with open(arrays, "r+b") as f:
        f.truncate(os.path.getsize(arrays) // 2)
    return newest


def weights(path: str):
    from tf_fastbat import models

    return models.load(path).get_weights()


def log_rows(workdir):
    """The training log's rows without the wall-clock column (the one thing two unbroken runs differ in)."""
    with open(os.path.join(str(workdir), "training_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(float(row.pop("epoch_seconds")) > 0 for row in rows)
    return rows


def figures(evaluation: dict) -> dict:
    """A report entry's test figures (its timings differ between any two runs)."""
    return {key: evaluation[key] for key in ("clean_accuracy", "robust_accuracy", "num_examples")}


def assert_same_run(resumed, unbroken) -> None:
    """Bit-identical final (and best) weights, log rows, best epoch and test figures."""
    checkpoints = sorted(os.listdir(os.path.join(str(unbroken), "checkpoints")))
    assert sorted(os.listdir(os.path.join(str(resumed), "checkpoints"))) == checkpoints
    for name in (n for n in checkpoints if n.endswith(".keras")):
        got, want = (weights(os.path.join(str(w), "checkpoints", name)) for w in (resumed, unbroken))
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert a.shape == b.shape and np.array_equal(a, b), f"{name}: max |diff| {np.abs(a - b).max()}"
    if "best.json" in checkpoints:
        assert json.loads(open(os.path.join(str(resumed), "checkpoints", "best.json")).read()) == \
            json.loads(open(os.path.join(str(unbroken), "checkpoints", "best.json")).read())
    assert log_rows(resumed) == log_rows(unbroken)
    assert [int(row["epoch"]) for row in log_rows(resumed)] == list(range(EPOCHS))
    got, want = (json.loads(open(os.path.join(str(w), "report.json")).read()) for w in (resumed, unbroken))
    assert got["best_epoch"] == want["best_epoch"] and set(got["checkpoints"]) == set(want["checkpoints"])
    for name in want["checkpoints"]:
        assert figures(got["checkpoints"][name]) == figures(want["checkpoints"][name])


def concurrently(jobs: dict) -> dict:
    """Run the jobs (name: function) in threads, since each mostly waits on its subprocesses; name: result or the
    exception it raised."""
    results = {}

    def run(name, job):
        try:
            results[name] = job()
        except BaseException as error:  # pytest.fail raises a BaseException
            results[name] = error

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def result_of(results: dict, name: str):
    if isinstance(results[name], BaseException):
        raise results[name]
    return results[name]


def fast_bat_chain(workdir, args) -> dict:
    """SIGTERM mid-epoch 1; rerun, SIGKILL mid-epoch 2; then two reruns to the end: of that workdir, and of a
    copy whose newest backup was truncated."""
    stops = [stop(workdir, args, "sigterm", FIRST_EPOCH[:-1], "first.txt"),
             stop(workdir, args, "sigkill", SECOND_EPOCH, "second.txt")]
    copy = workdir.parent / f"{workdir.name}-truncated"
    shutil.copytree(workdir, copy)
    truncated = truncate_newest(copy)
    reruns = concurrently({"rerun": functools.partial(train, workdir, args, "rerun.txt"),
                           "truncated": functools.partial(train, copy, args, "rerun.txt")})
    return {"stops": stops, "truncated": truncated, "rerun": result_of(reruns, "rerun"),
            "truncated_rerun": result_of(reruns, "truncated")}


def fast_at_chain(workdir, args) -> dict:
    """SIGKILL between the first epoch's early-stopping checkpoint and its backup; rerun, SIGKILL mid-epoch 2;
    rerun to the end."""
    stops = [stop(workdir, args, "sigkill_epoch_end", None, "first.txt"),
             stop(workdir, args, "sigkill", SECOND_EPOCH, "second.txt")]
    return {"stops": stops, "rerun": train(workdir, args, "rerun.txt")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The fast_bat and fast_at chains and one unbroken run per method (the references), all at once."""
    base = tmp_path_factory.mktemp("resume")
    return base, concurrently({
        "unbroken-fast_bat": functools.partial(train, base / "unbroken-fast_bat", ["--method=fast_bat", *TINY]),
        "unbroken-fast_at": functools.partial(train, base / "unbroken-fast_at", ["--method=fast_at", *TINY]),
        "fast_bat": functools.partial(fast_bat_chain, base / "fast_bat", ["--method=fast_bat", *TINY]),
        "fast_at": functools.partial(fast_at_chain, base / "fast_at", ["--method=fast_at", *TINY])})


def assert_stopped_mid_epoch(outcome: dict, epoch: int) -> None:
    state = outcome["state"]
    assert state["epoch"] == epoch and 0 < state["step"] < STEPS, f"not stopped mid-epoch {epoch + 1}: {outcome}"


@pytest.mark.slow
def test_sigterm_writes_a_backup_at_the_next_step_and_exits_143_with_one_line(single):
    base, results = single
    sigterm = result_of(results, "fast_bat")["stops"][0]
    assert_stopped_mid_epoch(sigterm, 0)
    state = sigterm["state"]
    lines = [line for line in sigterm["stderr"].splitlines() if "interrupted by" in line]
    assert sigterm["status"] == 128 + signal.SIGTERM and lines == [
        f"tf_fastbat.train: interrupted by SIGTERM at epoch 1/{EPOCHS}, step {state['step']}/{STEPS}; backup written "
        f"to {backup_folder(base / 'fast_bat', state['step'])}; rerun the same command to resume"], sigterm
    awaited = int(sigterm["chosen"].split("step-")[1].split(" ")[0])
    assert state["step"] > awaited, "the backup must be the one the signal asked for, after the awaited one"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fast_bat", "fast_at"])
def test_run_killed_mid_epoch_and_rerun_equals_an_unbroken_run(single, method):
    base, results = single
    reference = base / f"unbroken-{method}"
    result_of(results, f"unbroken-{method}")
    chain = result_of(results, method)
    killed = chain["stops"][1]
    assert killed["status"] == -signal.SIGKILL
    assert_stopped_mid_epoch(killed, 1)
    assert "resuming from" in killed["stderr"], "the killed run was itself a resumed one"
    assert [line for line in chain["rerun"].splitlines() if "warning" in line] == [], chain["rerun"][-3000:]
    assert "resuming from" in chain["rerun"]
    assert_same_run(base / method, reference)


@pytest.mark.slow
def test_kill_between_the_early_stopping_checkpoint_and_the_backup_restores_the_earlier_best(single):
    """best.json and best.keras of epoch 1 were on disk, the newest backup (mid-epoch 1) has no best yet: the rerun
    must drop them and redo epoch 1's end, as the final comparison with the unbroken run checks."""
    base, results = single
    first = result_of(results, "fast_at")["stops"][0]
    assert first["status"] == -signal.SIGKILL and first["stale_best"], first
    assert_stopped_mid_epoch(first, 0)
    assert first["state"]["best"] is None
    assert_same_run(base / "fast_at", base / "unbroken-fast_at")


@pytest.mark.slow
def test_truncated_newest_backup_falls_back_to_the_previous_one_with_one_warning(single):
    base, results = single
    chain = result_of(results, "fast_bat")
    warnings = [line for line in chain["truncated_rerun"].splitlines() if "warning" in line]
    assert len(warnings) == 1 and f"backup {chain['truncated']} is unreadable" in warnings[0] and \
        "using the previous one" in warnings[0], chain["truncated_rerun"][-3000:]
    assert_same_run(base / "fast_bat-truncated", base / "unbroken-fast_bat")


# ----------------------------------------------------------------------------------------------------------------
# Two workers (MultiWorkerMirroredStrategy) on loopback.

def free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(workdir, args, log_prefix):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    return [start(workdir, ["--distribution=multi_worker", *args], f"{log_prefix}{i}.txt", extra_env={
        "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)]


def train_workers(workdir, args, log_prefix):
    """Two workers running the command to the end."""
    workers = start_workers(workdir, args, log_prefix)
    for i, process in enumerate(workers):
        assert wait(process) == 0, stderr_of(workdir, f"{log_prefix}{i}.txt")[-3000:]


def stop_workers_and_rerun(workdir, args) -> dict:
    """Two workers; SIGKILL worker 1 a random delay after a random mid-epoch-2 backup (the chief then hangs in the
    next collective, and is killed too, as a scheduler would); then both rerun."""
    step, delay = choose("two-workers", SECOND_EPOCH)
    workers = start_workers(workdir, args, "first")
    wait_for_file(os.path.join(backup_folder(workdir, step), "manifest.json"), workers)
    time.sleep(delay)
    workers[1].send_signal(signal.SIGKILL)
    wait(workers[1])
    time.sleep(1.0)
    workers[0].send_signal(signal.SIGKILL)
    wait(workers[0])
    _, state = newest_backup(workdir)
    train_workers(workdir, args, "rerun")
    return {"state": state, "reruns": [stderr_of(workdir, f"rerun{i}.txt") for i in range(2)]}


@pytest.mark.slow
def test_two_workers_one_killed_mid_epoch_rerun_equals_unbroken_two_worker_run(tmp_path):
    """Without the held-out split (no early stopping: that is tested above) to keep the four processes cheap."""
    args = ["--method=fast_at", "--val_ratio=0", *TINY]
    results = concurrently({"unbroken": functools.partial(train_workers, tmp_path / "unbroken", args, "worker"),
                            "stopped": functools.partial(stop_workers_and_rerun, tmp_path / "stopped", args)})
    result_of(results, "unbroken")
    outcome = result_of(results, "stopped")
    assert_stopped_mid_epoch(outcome, 1)
    assert all("resuming from" in text for text in outcome["reruns"])
    assert_same_run(tmp_path / "stopped", tmp_path / "unbroken")
    got, want = (weights(os.path.join(str(w), ".worker-1", "checkpoints", "last.keras"))
                 for w in (tmp_path / "stopped", tmp_path / "unbroken"))
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
