"""Crash-safe fine-tuning (issue 19): complete checkpoints, keep_last, one writer per directory, SIGTERM writes a
checkpoint, and no trainer outlives its launcher.

    python -m pytest -q tests/test_crash_safety.py
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nanochat.train import checkpoints as C
from tests.test_rag_finetune import finetune_args, make_world

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("crash"))


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def complete_steps(ckpt: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in ckpt.glob("meta_*.json"))


def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding the trainer lock of `directory` (prints 'held' once it does)."""
    code = ("import sys, time; from nanochat.train.checkpoints import TrainerLock; "
            f"TrainerLock({str(directory)!r}).acquire(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


# -----------------------------------------------------------------------------
# one writer

def test_second_trainer_is_refused_naming_the_holder(world):
    ckpt = world["base"] / "rag_checkpoints" / "locked"
    holder = hold_lock(ckpt)
    try:
        with pytest.raises(C.CheckpointDirLocked) as err:
            C.TrainerLock(ckpt).acquire()
        assert f"pid {holder.pid} on host {socket.gethostname()}, started 20" in str(err.value)
        assert C.lock_holder(ckpt)["pid"] == holder.pid
        # the fine-tune CLI refuses the same way, before it writes anything there
        from scripts.rag_finetune import main
        with pytest.raises(SystemExit, match=rf"being written by another trainer \(pid {holder.pid} on host"):
            main(finetune_args(world, "locked", "--max_steps", "1"))
        assert [p.name for p in ckpt.iterdir()] == [C.LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    holder = hold_lock(tmp_path / "ck")
    holder.kill()  # SIGKILL: its lock file (pid, host, start time) stays behind
    holder.wait()
    assert json.loads((tmp_path / "ck" / C.LOCK_FILE).read_text())["pid"] == holder.pid
    assert C.lock_holder(tmp_path / "ck") is None  # nobody holds it
    lock = C.TrainerLock(tmp_path / "ck").acquire()
    try:
        assert f"taking over {tmp_path / 'ck' / C.LOCK_FILE} from pid {holder.pid}" in capsys.readouterr().out
        mine = json.loads((tmp_path / "ck" / C.LOCK_FILE).read_text())
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
        with pytest.raises(C.CheckpointDirLocked):  # and now it is ours alone
            C.TrainerLock(tmp_path / "ck").acquire()
    finally:
        lock.release()
    assert C.lock_holder(tmp_path / "ck") is None and (tmp_path / "ck" / C.LOCK_FILE).read_text() == ""


# -----------------------------------------------------------------------------
# when to save, what to keep

def test_save_schedule_auto_steps_and_minutes(monkeypatch):
    auto = C.SaveSchedule(0, 0, total_steps=300)
    assert [s for s in range(1, 301) if auto.step_due(s)] == [75, 150, 225, 300]
    assert not any(C.SaveSchedule(-1, 0, 300).step_due(s) for s in range(1, 301))
    clock = [1000.0]
    monkeypatch.setattr(C.time, "monotonic", lambda: clock[0])
    timed = C.SaveSchedule(-1, 0.5, 300)
    assert not timed.time_due()
    clock[0] += 31
    assert timed.time_due()
    timed.saved()
    assert not timed.time_due()


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (2, 4, 6, 8):
        for name in (f"model_{step:06d}.pt", f"optim_{step:06d}_rank0.pt", f"train_state_{step:06d}_rank0.pt",
                     f"meta_{step:06d}.json"):
            (tmp_path / name).write_text("x")
    (tmp_path / "model_000003.pt").write_text("x")  # an interrupted save: no meta
    (tmp_path / "model_000009.pt").write_text("x")  # a save in progress, newer than any complete one
    (tmp_path / "metrics.csv").write_text("x")
    assert C.prune(tmp_path, keep_last=2) == [2, 3, 4]
    assert complete_steps(tmp_path) == [6, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["metrics.csv", "model_000009.pt"] + [f"{k}_{s:06d}{r}" for s in (6, 8) for k, r in
                                              (("model", ".pt"), ("optim", "_rank0.pt"),
                                               ("train_state", "_rank0.pt"), ("meta", ".json"))])
    assert C.prune(tmp_path, keep_last=0) == []


def test_stop_signals_set_a_flag_once_and_restore_the_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with C.StopSignals(grace_s=60) as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)  # SLURM and torchrun may both signal: one stop, no hard exit
        time.sleep(0.1)
        assert stop.requested and stop.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGTERM) is before


# -----------------------------------------------------------------------------
# signals and orphans (real trainer processes)

def trainer_cmd(world, tag, *extra):
    return ["-m", "scripts.rag_finetune", *finetune_args(world, tag, "--num_epochs", "500", "--max_steps", "400",
                                                         "--eval_every", "-1", *extra)]


def wait_for_steps(ckpt: Path, n: int, timeout: float = 120):
    def rows():
        path = ckpt / "metrics.csv"
        return path.is_file() and len(path.read_text().splitlines()) - 1 >= n
    wait_for(rows, timeout, f"{n} training steps in {ckpt}")


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_before_exiting_and_resume_continues(world):
    ckpt = world["base"] / "rag_checkpoints" / "term"
    proc = subprocess.Popen([sys.executable, *trainer_cmd(world, "term")], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(ckpt, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    steps = complete_steps(ckpt)
    assert len(steps) == 1 and 3 <= steps[0] < 400, steps  # no periodic saves were asked for: the signal's one
    step = steps[0]
    assert (ckpt / f"model_{step:06d}.pt").is_file() and (ckpt / f"optim_{step:06d}_rank0.pt").is_file()
    assert (ckpt / f"train_state_{step:06d}_rank0.pt").is_file() and not (ckpt / "done.json").exists()
    assert f"stopped by SIGTERM after step {step} of 400" in out and "--resume true" in out
    assert C.lock_holder(ckpt) is None
    from scripts.rag_finetune import main
    main(finetune_args(world, "term", "--num_epochs", "500", "--max_steps", str(step + 3), "--eval_every", "-1",
                       "--resume"))  # a shorter schedule would change the lr curve; only resumption is checked here
    log = (ckpt / "metrics.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in log] == list(range(1, step + 4))
    assert json.loads((ckpt / "done.json").read_text())["resumed_from"] == step


def descendants_alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process-tree checks use Linux semantics")
def test_killing_the_launcher_leaves_no_trainer(world):
    """A stand-in for Snakemake starts `exec python -m nanochat.pipeline.launch guard torchrun ... scripts.rag_finetune`
    (the rule's command); SIGKILL of the stand-in, then of a torchrun agent directly: within seconds no trainer is
    left, and the worker saved a checkpoint on its way out."""
    for case, victim in (("snakemake", "parent"), ("agent", "torchrun")):
        tag = f"orphan_{case}"
        ckpt = world["base"] / "rag_checkpoints" / tag
        cmd = " ".join([sys.executable, "-m", "nanochat.pipeline.launch", "guard", sys.executable, "-m",
                        "torch.distributed.run", "--standalone", "--nproc_per_node=1", *trainer_cmd(world, tag)])
        stand_in = ("import subprocess, sys, time; "
                    "subprocess.Popen(['bash', '-c', 'exec ' + sys.argv[1]]); time.sleep(600)")
        parent = subprocess.Popen([sys.executable, "-c", stand_in, cmd],
                                  cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        wait_for_steps(ckpt, 2)
        tree = psutil.Process(parent.pid).children(recursive=True)
        agent = next(p for p in tree if "torch.distributed.run" in " ".join(p.cmdline()))
        workers = [p for p in tree if "scripts.rag_finetune" in " ".join(p.cmdline()) and p.pid != agent.pid]
        assert workers and all(w.ppid() == agent.pid for w in workers)
        (agent if victim == "torchrun" else psutil.Process(parent.pid)).kill()
        wait_for(lambda tree=tree: not descendants_alive(tree), 20, f"no trainer alive after SIGKILL of the {victim}")
        if victim == "torchrun":
            parent.kill()
        parent.wait()
        assert complete_steps(ckpt) and not (ckpt / "done.json").exists()
        assert C.lock_holder(ckpt) is None
