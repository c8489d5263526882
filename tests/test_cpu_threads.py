"""ddpm_ext.cpu_threads: the thread count follows the cores other processes leave free."""

import argparse

import pytest
import torch

from ddpm_ext import cpu_threads
from ddpm_ext.commands.cli import add_cpu_threads_argument
from ddpm_ext.cpu_threads import AdaptiveThreads, parse_cpu_threads


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class FakeMachine:
    """A clock, the machine's busy CPU seconds and this process's own CPU seconds, advanced by hand."""

    def __init__(self, monkeypatch):
        self.wall = self.busy = self.own = 0.0
        monkeypatch.setattr(cpu_threads.time, "monotonic", lambda: self.wall)
        monkeypatch.setattr(cpu_threads, "_busy_seconds", lambda path=None: self.busy)
        monkeypatch.setattr(cpu_threads, "_own_seconds", lambda: self.own)

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


def test_parse_cpu_threads():
    assert parse_cpu_threads("auto") == "auto"
    assert parse_cpu_threads("3") == 3 and parse_cpu_threads(1) == 1
    for bad in ("0", "-1", "two", "1.5", "", True):
        with pytest.raises(ValueError, match=r"`cpu_threads` must be 'auto' or an integer >= 1, got"):
            parse_cpu_threads(bad)


def test_the_cli_option_names_the_flag():
    p = argparse.ArgumentParser()
    add_cpu_threads_argument(p)
    assert p.parse_args([]).cpu_threads == "auto" and p.parse_args(["--cpu_threads", "2"]).cpu_threads == 2
    with pytest.raises(SystemExit):
        p.parse_args(["--cpu_threads", "zero"])


@pytest.mark.parametrize("others, expected", [(0.0, 4), (0.3, 4), (0.6, 3), (1.0, 3), (1.7, 2), (3.5, 1), (9.0, 1)])
def test_wanted_threads_are_the_free_cores(others, expected, keep_threads):
    threads = AdaptiveThreads(max_threads=4, enabled=False, machine_cores=4)
    assert threads.wanted_threads(others) == expected
    # on a 64-core machine, other jobs that leave more than this job's 4 cores free take nothing from it
    assert AdaptiveThreads(max_threads=4, enabled=False, machine_cores=64).wanted_threads(others + 30) == 4


def test_other_processes_exclude_our_own_spinning_threads(monkeypatch, keep_threads):
    m = FakeMachine(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = AdaptiveThreads(max_threads=2, interval=1.0, patience=2, machine_cores=2)
    assert threads.enabled and threads.threads == 2 and torch.get_num_threads() == 2
    # we spin on both cores (2 cores of our own CPU time), nobody else: stay at 2
    for _ in range(5):
        m.run(1.0, own_cores=2.0, other_cores=0.0)
        assert threads.tick() == 2
    # another process takes 0.7 of a core: the first reading only starts a streak (patience 2), the second acts
    m.run(1.0, own_cores=1.3, other_cores=0.7)
    assert threads.tick() == 2
    m.run(1.0, own_cores=1.3, other_cores=0.7)
    assert threads.tick() == 1 and torch.get_num_threads() == 1
    # it keeps its core while we run on one thread
    m.run(1.0, own_cores=1.0, other_cores=1.0)
    assert threads.tick() == 1
    # readings come at most once per interval: a step 0.2 s later reads nothing
    m.wall += 0.2
    m.busy += 0.2  # the other process left, but this reading is skipped
    assert threads.tick() == 1
    # the other process has gone: two readings later we are back on both cores
    for expected in (1, 2):
        m.run(1.0, own_cores=1.0, other_cores=0.0)
        assert threads.tick() == expected
    assert torch.get_num_threads() == 2
    summary = threads.summary()
    assert summary["adaptive"] and summary["changes"] == 2 and summary["max_threads"] == 2
    assert sum(summary["steps_per_thread_count"].values()) == 11


def test_a_short_burst_does_not_flip_the_count(monkeypatch, keep_threads):
    m = FakeMachine(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = AdaptiveThreads(max_threads=2, interval=1.0, patience=2, machine_cores=2)
    for others in (1.0, 0.0, 1.0, 0.0):
        m.run(1.0, own_cores=2.0 - others, other_cores=others)
        assert threads.tick() == 2
    assert threads.changes == 0


def test_off_when_the_user_chose(monkeypatch, keep_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not AdaptiveThreads().enabled
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # `accelerate launch` set it: adapt below its count
    assert AdaptiveThreads(max_threads=2).enabled is (cpu_threads._busy_seconds() is not None)
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert not AdaptiveThreads(max_threads=1).enabled  # nothing to adapt
    monkeypatch.setattr(cpu_threads, "_busy_seconds", lambda path=None: None)  # no /proc/stat
    assert not AdaptiveThreads(max_threads=2).enabled
    fixed = AdaptiveThreads.from_option(1)
    assert not fixed.enabled and torch.get_num_threads() == 1 and fixed.tick() == 1


def test_the_real_proc_stat_reads_a_load():
    load = cpu_threads.other_processes_cpu(0.05)
    assert load is None or 0 <= load < 1024
