"""Hub calls that end: a Hub that accepts connections and never answers ends a push at its deadline, in one line
with the retry command, and every request huggingface_hub sends for ddpm_ext has a timeout."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import get_session

from ddpm_ext import DDPMExtPipeline, network
from ddpm_ext.commands import push as push_command
from ddpm_ext.hub import push_pipeline, reach_repo
from ddpm_ext.hub.push import DEFAULT_PUSH_TIMEOUT, retry_command
from ddpm_ext.network import HubDeadlineError, hub_time_limits, run_with_deadline
from ddpm_ext.training import outputs

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hf_deadline_secret_token"


@pytest.fixture
def silent_hub():
    """A loopback server that accepts every connection and never sends a byte (the hung Hub of issue 31)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never read, never answered

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield argparse.Namespace(url=f"http://127.0.0.1:{server.getsockname()[1]}", held=held)
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def pipeline_folder(tiny_pipeline_dir, tmp_path) -> Path:
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    (folder / "README.md").write_text("---\nlibrary_name: diffusers\n---\n# tiny\n")
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_push_to_a_hub_that_never_answers_ends_at_its_deadline(silent_hub, pipeline_folder):
    # a card not yet pushed: its snippet loads the folder (the push points it at the repo, and back if it fails)
    (pipeline_folder / "README.md").write_text(f"```python\npipe = DDPMExtPipeline.from_pretrained("
                                               f"{str(pipeline_folder.resolve())!r})\n```\n")
    before = snapshot(pipeline_folder)
    start = time.monotonic()
    with pytest.raises(HubDeadlineError, match=r"the push to me/tiny did not finish within 2 s"):
        push_pipeline(pipeline_folder, repo_id="me/tiny", token=SECRET, endpoint=silent_hub.url, timeout=2)
    elapsed = time.monotonic() - start
    assert 1.9 <= elapsed < 4.0, elapsed  # the deadline (2 s), plus the join's 0.5 s grace at most
    assert len(silent_hub.held) >= 1  # the server did accept: the request hung, it was not refused
    assert snapshot(pipeline_folder) == before  # nothing local lost or changed


def test_the_push_command_ends_in_one_line_with_the_retry_command(silent_hub, pipeline_folder, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", silent_hub.url)
    args = argparse.Namespace(pipeline=str(pipeline_folder), repo_id="me/tiny", private=True, timeout=1.0,
                              token=SECRET)
    start = time.monotonic()
    assert push_command.run(args) == 1
    assert time.monotonic() - start < 3.0
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err == (f"error: the push to me/tiny did not finish within 1 s (the Hub did not answer in time); the "
                   f"local folder is intact; retry with: ddpm-ext push {pipeline_folder} --repo_id me/tiny --private "
                   "--timeout 1\n")
    assert SECRET not in err


def test_a_training_runs_push_past_its_deadline_says_how_to_retry(silent_hub, pipeline_folder, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", silent_hub.url)
    printed: list[str] = []
    accelerator = argparse.Namespace(print=printed.append)
    args = argparse.Namespace(output_dir=str(pipeline_folder), hub_model_id="me/run", hub_private_repo=False,
                              hub_token=SECRET, hub_push_timeout=1.0)
    assert outputs.push(args, pipeline_folder, accelerator) == 3
    [line] = printed
    assert line == (f"error: the push to the Hub failed (it did not finish within 1 s: the Hub did not answer in "
                    f"time). The trained pipeline is intact in {pipeline_folder}; retry with: ddpm-ext push "
                    f"{pipeline_folder} --repo_id me/run --timeout 1")


def test_the_preflight_of_a_training_run_ends_at_its_deadline(silent_hub):
    start = time.monotonic()
    with pytest.raises(HubDeadlineError, match="reaching the Hub repository me/run did not finish within 1 s"):
        reach_repo("me/run", token=SECRET, endpoint=silent_hub.url, timeout=1)
    assert time.monotonic() - start < 3.0


def test_a_download_from_a_hub_that_never_answers_ends(silent_hub, monkeypatch):
    """`DDPMExtPipeline.from_pretrained(repo_id)`'s snapshot_download: its repo-info request has no timeout of its
    own in huggingface_hub; under ddpm_ext every request has one (1 s here instead of the default 60 s)."""
    monkeypatch.setattr(network, "DEFAULT_REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", silent_hub.url)
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"Could not fetch the pipeline 'me/never'"):
        DDPMExtPipeline.from_pretrained("me/never")
    assert time.monotonic() - start < 15.0  # a few requests of 1 s each, not forever


def test_hub_time_limits_bound_each_request_and_restore_the_client_factory():
    outside = get_session()
    sent = []
    with hub_time_limits(timeout=3, deadline=time.monotonic() + 1.5):
        client = get_session()
        assert client is not outside  # the shared client was recreated with the hook
        request = client.build_request("GET", "http://127.0.0.1:9/x", timeout=None)  # None: no limit of its own
        for hook in client.event_hooks["request"]:
            hook(request)
        sent.append(request.extensions["timeout"])
        request = client.build_request("GET", "http://127.0.0.1:9/x", timeout=0.25)
        client.event_hooks["request"][-1](request)
        sent.append(request.extensions["timeout"])
    assert all(0 < v <= 1.5 for v in sent[0].values())  # the time left before the deadline, not 3 s, not None
    assert sent[1] == dict.fromkeys(("connect", "read", "write", "pool"), 0.25)  # a shorter own timeout is kept
    after = get_session()
    assert after is not client
    assert len(after.event_hooks["request"]) == len(outside.event_hooks["request"])  # the factory restored


def test_nested_limits_apply_the_strictest_and_the_factory_comes_back_after_the_last():
    outside = len(get_session().event_hooks["request"])
    with hub_time_limits(timeout=5):
        with hub_time_limits(timeout=0.5):
            request = get_session().build_request("GET", "http://127.0.0.1:9/x")
            get_session().event_hooks["request"][-1](request)
            assert set(request.extensions["timeout"].values()) == {0.5}
        request = get_session().build_request("GET", "http://127.0.0.1:9/x", timeout=None)
        get_session().event_hooks["request"][-1](request)
        assert set(request.extensions["timeout"].values()) == {5.0}  # the inner block closed, the outer holds
    assert len(get_session().event_hooks["request"]) == outside


def test_past_the_deadline_no_request_is_sent():
    with hub_time_limits(timeout=3, deadline=time.monotonic() - 1, what="the test"):
        client = get_session()
        request = client.build_request("GET", "http://127.0.0.1:9/x")
        with pytest.raises(HubDeadlineError, match="the test passed its deadline; GET http://127.0.0.1:9/x"):
            client.event_hooks["request"][-1](request)


def test_run_with_deadline_returns_raises_and_checks_its_seconds():
    assert run_with_deadline(lambda: 42, 5) == 42

    def nested() -> str:  # e.g. a download (its own block) inside a push: another thread, no deadlock
        with hub_time_limits(timeout=1):
            return "inner"

    assert run_with_deadline(nested, 5) == "inner"
    with pytest.raises(KeyError, match="inner"):
        run_with_deadline(lambda: {}["inner"], 5)
    with pytest.raises(HubDeadlineError, match="the nap did not finish within 0.3 s"):
        run_with_deadline(lambda: time.sleep(3), 0.3, what="the nap")
    for bad in (0, -1, float("inf"), float("nan"), True, "10"):
        with pytest.raises(ValueError, match="The deadline must be a finite number of seconds > 0"):
            run_with_deadline(lambda: 1, bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, float("inf"), float("nan")])
def test_a_bad_push_timeout_is_refused_before_any_request(bad, pipeline_folder, capsys):
    args = argparse.Namespace(pipeline=str(pipeline_folder), repo_id="me/tiny", private=False, timeout=bad,
                              token=None)
    with pytest.raises(ValueError, match=rf"`--timeout` must be a finite number of seconds > 0 \(default "
                                         rf"{DEFAULT_PUSH_TIMEOUT:g}\), got {bad!r}"):
        push_command.run(args)


def test_the_retry_command_names_no_token_and_keeps_a_non_default_deadline():
    assert retry_command("out/x", "me/x") == "ddpm-ext push out/x --repo_id me/x"
    assert retry_command("out dir", "me/x", private=True, timeout=90) == \
        "ddpm-ext push 'out dir' --repo_id me/x --private --timeout 90"


@pytest.mark.slow  # a subprocess importing torch and diffusers
def test_python_m_ddpm_ext_push_to_a_hub_that_never_answers_ends(silent_hub, pipeline_folder):
    """Issue 31's case: `python -m ddpm_ext push` against a server that never answers ran past 200 s."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=silent_hub.url, HF_HOME=str(pipeline_folder.parent / "hf-home"), HF_TOKEN=SECRET)
    cmd = [sys.executable, "-m", "ddpm_ext", "push", str(pipeline_folder), "--repo_id", "me/tiny", "--timeout", "3"]
    start = time.monotonic()
    result = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - start < 60  # the import of torch and diffusers, then 3 s
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in result.stderr and SECRET not in result.stdout + result.stderr
    assert err.endswith(f"retry with: ddpm-ext push {pipeline_folder} --repo_id me/tiny --timeout 3")
