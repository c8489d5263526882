"""One run per output folder: a second run is refused naming the holder, a lock left by a killed run is taken over,
racing takeovers have one winner; in process (fast) and with real concurrent processes (slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_training import ENV, ROOT, SCRIPT, TINY, assert_same_weights, run, weights

from ddpm_ext.training.run_lock import LOCK_FILE, OutputDirInUse, acquire_run_lock
from ddpm_ext.training.train import main as train_main


def test_a_second_holder_is_refused_naming_the_first_and_a_release_frees_the_folder(tmp_path):
    lock = acquire_run_lock(tmp_path / "out")
    record = json.loads((tmp_path / "out" / LOCK_FILE).read_text())
    assert (record["pid"], record["host"]) == (os.getpid(), socket.gethostname()) and lock.taken_over is None
    with pytest.raises(OutputDirInUse) as e:
        acquire_run_lock(tmp_path / "out")
    assert str(e.value).startswith(f"--output_dir {tmp_path / 'out'} is in use by another training run (pid "
                                   f"{os.getpid()} on host {socket.gethostname()}, started ")
    lock.release()
    assert not (tmp_path / "out" / LOCK_FILE).exists()  # a finished run leaves nothing behind
    acquire_run_lock(tmp_path / "out").release()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_racing_takeovers_have_one_winner(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"pid": int(ended.stdout), "host": socket.gethostname(), "started": "earlier", "command": "train"}
    (out / LOCK_FILE).write_text(json.dumps(dead))  # the file a SIGKILLed run leaves: nobody holds its lock
    start = threading.Barrier(8)
    won, refused = [], []

    def take():
        start.wait()
        try:
            won.append(acquire_run_lock(out))
        except OutputDirInUse as e:
            refused.append(str(e))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert won[0].taken_over == dead
    assert all(f"(pid {os.getpid()} on host" in message for message in refused)
    won[0].release()


def test_the_record_masks_a_token_given_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_ddpm.py", "--hub_token", "hf_secret", "--hub_tok=hf_other", "--seed", "1"])
    lock = acquire_run_lock(tmp_path)
    text = (tmp_path / LOCK_FILE).read_text()
    lock.release()
    assert "hf_secret" not in text and "hf_other" not in text
    assert json.loads(text)["command"] == "train_ddpm.py --hub_token *** --hub_tok=*** --seed 1"


def test_a_run_into_a_locked_folder_is_refused_in_one_line_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    holder = acquire_run_lock(out)
    before = (out / LOCK_FILE).read_bytes()
    code = train_main(TINY + ["--max_train_steps", "2", "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == [LOCK_FILE] and (out / LOCK_FILE).read_bytes() == before
    holder.release()
    assert code == 2
    assert err.strip() == (f"error: --output_dir {out} is in use by another training run (pid {os.getpid()} on host "
                           f"{socket.gethostname()}, started {json.loads(before)['started']}, running: "
                           f"{json.loads(before)['command']}; lock file {out / LOCK_FILE}); wait for it to end, stop "
                           "it, or train into another --output_dir")


# --------------------------------------------------------------------------------------------------
# Real processes
# --------------------------------------------------------------------------------------------------
LONG = TINY + ["--max_train_steps", "400", "--checkpointing_steps", "20", "--cpu_threads", "1"]


def start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT)] + argv, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
def test_two_concurrent_runs_one_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    first = start(LONG + ["--output_dir", str(out)])
    wait_for(out / "checkpoint-20", first)
    second = run(LONG + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"], check=False, timeout=300)
    assert first.poll() is None, "the first run must still be training"
    assert second.returncode == 2
    [line] = [line for line in second.stderr.splitlines() if "error" in line]
    assert line.startswith(f"error: --output_dir {out} is in use by another training run (pid {first.pid} on host ")
    stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-380", "checkpoint-400"]
    assert (out / "model_index.json").is_file() and not (out / LOCK_FILE).exists()
    final, ema = weights(out), weights(out / "checkpoint-400", "unet_ema")
    assert all(torch.equal(final[k], ema[k]) for k in final)  # exact: the pipeline is a copy of these EMA weights

    # a run killed while holding the lock: the next one takes it over, and the resumed run ends where the first did
    killed = tmp_path / "killed"
    third = start(LONG + ["--output_dir", str(killed)])
    wait_for(killed / "checkpoint-40", third)
    third.send_signal(signal.SIGKILL)
    third.wait()
    assert (killed / LOCK_FILE).exists()
    resumed = run(LONG + ["--output_dir", str(killed), "--resume_from_checkpoint", "latest"], timeout=600)
    assert f"Took over the lock of {killed}, left by a run that ended without releasing it (pid {third.pid} on host" \
        in resumed.stdout
    assert_same_weights(out, killed)


def test_a_lock_still_held_by_the_children_of_an_ended_run_says_so(tmp_path):
    """A killed run's forked data loader workers keep its lock for a moment: the message says to retry."""
    out = tmp_path / "out"
    out.mkdir()
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    record = {"pid": int(ended.stdout), "host": socket.gethostname(), "started": "earlier", "command": "train"}
    (out / LOCK_FILE).write_text(json.dumps(record))
    child = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys, time
fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "held\n"
        with pytest.raises(OutputDirInUse, match=r"is still locked by processes of a run that has ended \(pid "
                           f"{record['pid']} on host .*retry in a few seconds"):
            acquire_run_lock(out)
    finally:
        child.communicate("")
    acquire_run_lock(out).release()
