"""benchmarks/gpu_check.py: its pure parts (deadline, junit report, table, exit status) in the fast tier, and the
whole check on the CPU (`--cpu`, tiny sizes) in the slow tier, so that it still runs when a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the script imports _common and bench_training as siblings
    try:
        yield load_script("benchmarks/gpu_check.py")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_deadline_counts_down_and_refuses_work_that_would_overrun(check):
    clock = FakeClock()
    deadline = check.Deadline(480.0, clock=clock)
    clock.now += 400.0
    assert deadline.elapsed() == 400.0 and deadline.left() == 80.0
    assert deadline.allows(80.0) and not deadline.allows(80.5)
    assert deadline.refusal(150.0) == "not run: needs about 150 s, 80 s of the budget left"
    clock.now += 100.0
    assert deadline.left() == -20.0 and deadline.refusal(1.0).endswith("0 s of the budget left")


def test_guarded_work_becomes_a_row_whatever_happens(check):
    ctx = check.Context(device=None, sizes=None, deadline=check.Deadline(60.0), output_dir=Path("."))
    ok = check.guarded(ctx, "sampling", "v", 1.0, lambda: check.Row("sampling", "v", note="done"))
    assert (ok.status, ok.note) == ("passed", "done")
    refused = check.guarded(ctx, "sampling", "v", 61.0, lambda: pytest.fail("must not run"))
    assert refused.status == "not run" and refused.note.startswith("not run: needs about 61 s")

    def boom():
        raise RuntimeError("CUDA error: out of memory")

    failed = check.guarded(ctx, "train_throughput", "fp16", 1.0, boom)
    assert (failed.status, failed.note) == ("failed", "RuntimeError: CUDA error: out of memory")


def test_work_that_overruns_is_stopped_at_the_deadline(check):
    ctx = check.Context(device=None, sizes=None, deadline=check.Deadline(0.3), output_dir=Path("."))
    start = time.monotonic()
    row = check.guarded(ctx, "train_throughput", "compile", 0.1, lambda: time.sleep(5))
    assert row.status == "not run" and row.note == "stopped at the global deadline"
    assert time.monotonic() - start < 2.0


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" tests="4">
<testcase classname="test_cuda" name="test_sampling[ddpm-strict_fp32]" time="1.5">
  <properties><property name="max_abs_diff" value="2.5e-05"/><property name="tolerance" value="0.001"/></properties>
</testcase>
<testcase classname="test_cuda" name="test_resume[fp16]" time="0.01">
  <skipped type="pytest.skip" message="fp16 on CUDA only">skip</skipped>
</testcase>
<testcase classname="test_cuda" name="test_resume[bf16]" time="9.0">
  <failure message="AssertionError: weight differs">trace</failure>
</testcase>
<testcase classname="test_cuda" name="test_generators[ddim]" time="0.5"/>
</testsuite></testsuites>"""


def test_junit_report_is_read_and_judged(check):
    cases = check.parse_junit(JUNIT)
    assert [(c["name"], c["outcome"]) for c in cases] == [
        ("test_sampling[ddpm-strict_fp32]", "passed"), ("test_resume[fp16]", "skipped"),
        ("test_resume[bf16]", "failed"), ("test_generators[ddim]", "passed")]
    assert cases[0]["properties"] == {"max_abs_diff": "2.5e-05", "tolerance": "0.001"}
    assert cases[0]["seconds"] == 1.5 and cases[2]["message"] == "AssertionError: weight differs"
    assert check.judge_tests(cases, 1) == ("failed", "1 failed: test_resume[bf16]")
    assert check.judge_tests([c for c in cases if c["outcome"] != "failed"], 0) == ("passed", "")
    # on a CUDA machine whose tests all skipped (CUDA not seen by them), the check fails
    skipped = [c for c in cases if c["outcome"] == "skipped"]
    assert check.judge_tests(skipped, 0) == ("failed", "no GPU test passed (1 collected, all skipped)")
    assert check.judge_tests([], 4)[0] == "failed"


def test_table_rendering(check):
    rows = [
        check.Row("train_throughput", "bf16", ours="812.0 img/s", theirs="640.0 img/s", time_ratio=0.8,
                  ours_peak=3 * 2**30, theirs_peak=512 * 2**20, note="max |Δ| 1e-05"),
        check.Row("train_throughput", "bf16 + compile", "not run", note="stopped at the global deadline"),
        check.Row("train_run", "bf16, 120 s target", ours="118 s", ours_peak=1536),
    ]
    assert check.render_table(rows).splitlines() == [
        "| step | variant | status | ddpm_ext | diffusers | time ratio ddpm_ext / diffusers | speed-up "
        "| peak memory ddpm_ext / diffusers | notes |",
        "|---|---|---|---|---|---|---|---|---|",
        "| train_throughput | bf16 | passed | 812.0 img/s | 640.0 img/s | 0.80× | 1.25× | 3.0 GiB / 512.0 MiB "
        "| max \\|Δ\\| 1e-05 |",
        "| train_throughput | bf16 + compile | **not run** |  |  |  |  |  | stopped at the global deadline |",
        "| train_run | bf16, 120 s target | passed | 118 s |  |  |  | 1.5 KiB |  |",
    ]


def test_exit_status_fails_on_any_failure_or_missing_step(check):
    def results(**statuses):
        return [check.StepResult(name, statuses.get(name, "passed")) for name in check.STEPS]

    assert check.exit_code(results()) == 0
    assert check.exit_code(results(train_run="not run")) == 1
    assert check.exit_code(results(gpu_tests="failed")) == 1
    assert check.exit_code(results()[:-1]) == 1  # a step missing from the report
    with_rows = results()
    with_rows[1].rows = [check.Row("train_throughput", "fp32"), check.Row("train_throughput", "compile", "skipped")]
    assert check.exit_code(with_rows) == 0  # a variant this device cannot run, with its reason, is no failure
    with_rows[1].rows.append(check.Row("train_throughput", "fp16", "not run"))
    assert check.exit_code(with_rows) == 1
    assert with_rows[1].settle().status == "failed"
    only_skipped = check.StepResult("sampling", rows=[check.Row("sampling", "x", "skipped")])
    assert only_skipped.settle().status == "skipped"


@pytest.mark.slow
def test_the_check_runs_on_the_cpu(tmp_path):
    """The whole check with --cpu (tiny sizes, about a minute on an idle 2-core machine with one thread)."""
    out = tmp_path / "gpu-check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--output_dir",
                             str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads((out / "results.json").read_text())
    assert report["ok"] is True and report["device"] == "cpu"
    steps = report["steps"]
    assert list(steps) == ["gpu_tests", "train_throughput", "sampling", "train_run", "peak_memory"]
    assert all(s["status"] == "passed" for s in steps.values()), {k: s["reason"] for k, s in steps.items()}

    tests = {r["variant"]: r["status"] for r in steps["gpu_tests"]["rows"]}
    assert sum(s == "passed" for s in tests.values()) >= 7, tests
    assert all(s in ("passed", "skipped") for s in tests.values()), tests

    throughput = {r["variant"]: r for r in steps["train_throughput"]["rows"]}
    assert list(throughput) == ["fp32", "bf16", "fp16", "bf16 + channels_last", "bf16 + channels_last + compile"]
    assert throughput["bf16 + channels_last + compile"]["status"] == "skipped"
    assert "torch.compile" in throughput["bf16 + channels_last + compile"]["note"]
    for name in ("fp32", "bf16", "fp16", "bf16 + channels_last"):
        row = throughput[name]
        assert row["status"] == "passed" and row["time_ratio"] > 0, row
        assert row["data"]["ours_images_per_s"] > 0 and row["data"]["diffusers_images_per_s"] > 0

    sampling = steps["sampling"]["rows"]
    assert len(sampling) == 2 and all(r["time_ratio"] > 0 for r in sampling)
    # 50 steps against 1000: the default sampler takes a fraction of DDPM-1000's time per image
    assert sampling[0]["time_ratio"] < 0.5
    assert sampling[1]["data"]["max_abs_diff"] <= 1e-3

    run = steps["train_run"]["rows"][0]["data"]
    assert run["exit_code"] == 0 and run["loss_last_tenth"] < 0.8 * run["loss_first_tenth"]
    assert all(e["finite"] and e["float32"] for e in run["ema"].values())
    assert all(r["data"]["ours_bytes"] > 0 for r in steps["peak_memory"]["rows"])

    markdown = (out / "results.md").read_text()
    assert "CPU smoke run" in markdown and "| train_run | bf16, 10 s target | passed |" in markdown
    assert "| step | variant | status |" in result.stdout
    assert {p.name for p in out.iterdir()} == {"results.json", "results.md", "gpu_tests.xml", "gpu_tests.log"}
    assert seconds < 300, f"the CPU smoke run took {seconds:.0f} s"
