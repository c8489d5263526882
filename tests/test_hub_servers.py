"""Self-test of the local Hub servers in ``hub_servers.py`` (a few seconds).

Every client call passes an explicit ``endpoint=`` (or runs in a subprocess with
``HF_ENDPOINT``), and every download uses a fresh cache dir, so neither the
import-time ``HF_ENDPOINT`` nor a cache can hide a server failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_servers import OlahServer, UploadHubServer, publish_folder  # fixtures come from conftest.py
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError

README = """---
license: mit
library_name: diffusers
tags:
- ddpm
---

# Test model

Pushed to the local test Hub.
"""


def _make_folder(root: Path) -> dict[str, bytes]:
    """Files that cover olah's weak spots: a 130-byte binary and a 130-byte JSON."""
    files = {
        "blob130.bin": bytes(range(130)),  # not UTF-8, inside olah's 121..149-byte sniffing range
        "model_index.json": json.dumps({"_class_name": "DDPMPipeline", "x": "y" * 80}).encode(),
        "scheduler/scheduler_config.json": json.dumps(
            {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear"}, indent=2
        ).encode(),
        "unet/diffusion_pytorch_model.bin": os.urandom(300 * 1024),
    }
    files["model_index.json"] += b" " * (130 - len(files["model_index.json"]))
    assert len(files["model_index.json"]) == 130
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".cache" not in p.relative_to(root).parts}


def _snapshot(repo_id: str, endpoint: str, cache_dir: Path) -> dict[str, bytes]:
    return _read_tree(Path(snapshot_download(repo_id, revision="main", endpoint=endpoint, cache_dir=cache_dir)))


def test_publish_folder_is_served_byte_for_byte(olah_hub: OlahServer, tmp_path: Path) -> None:
    files = _make_folder(tmp_path / "src")
    publish_folder(olah_hub.mirrors_root, "test-org/published", tmp_path / "src")

    assert _snapshot("test-org/published", olah_hub.url, tmp_path / "cache1") == files
    for rel, data in files.items():
        path = hf_hub_download("test-org/published", rel, revision="main",
                               endpoint=olah_hub.url, cache_dir=tmp_path / "cache2")
        assert Path(path).read_bytes() == data, rel

    # Publishing again replaces the tree, and olah serves the new commit at once.
    (tmp_path / "src" / "blob130.bin").unlink()
    (tmp_path / "src" / "model_index.json").write_bytes(b'{"changed": true}')
    del files["blob130.bin"]
    files["model_index.json"] = b'{"changed": true}'
    publish_folder(olah_hub.mirrors_root, "test-org/published", tmp_path / "src")
    assert _snapshot("test-org/published", olah_hub.url, tmp_path / "cache3") == files


def test_upload_server_checks_the_token(upload_hub: UploadHubServer) -> None:
    for bad in ("hf_wrong_token", False):  # a wrong token, and no token at all
        with pytest.raises(HfHubHTTPError) as info:
            HfApi(endpoint=upload_hub.url, token=bad).create_repo("test-org/denied")
        assert info.value.response.status_code == 401
    assert not (upload_hub.mirrors_root / "models" / "test-org" / "denied").exists()

    api = HfApi(endpoint=upload_hub.url, token=upload_hub.token)
    api.create_repo("test-org/guarded")
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(endpoint=upload_hub.url, token="hf_wrong_token").upload_file(
            path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="test-org/guarded")
    assert info.value.response.status_code == 401
    assert upload_hub.commits == []

    with pytest.raises(HfHubHTTPError) as info:  # only "org/name" repo ids
        api.create_repo("no-namespace")
    assert info.value.response.status_code == 400


def test_push_then_pull_through_olah(olah_hub: OlahServer, upload_hub: UploadHubServer, tmp_path: Path) -> None:
    repo_id = "test-org/pushed"
    files = _make_folder(tmp_path / "src")
    (tmp_path / "src" / "README.md").write_text(README)
    files["README.md"] = README.encode()

    api = HfApi(endpoint=upload_hub.url, token=upload_hub.token)
    repo_url = api.create_repo(repo_id, private=True)
    assert repo_url.repo_id == repo_id
    api.create_repo(repo_id, exist_ok=True)  # 409 from the server, accepted by the client
    info = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", commit_message="Add model")

    (commit,) = upload_hub.commits_for(repo_id)
    assert commit.oid == info.oid and commit.summary == "Add model"
    assert commit.added == files
    assert upload_hub.repos[("model", repo_id)].private is True

    # Pull through the real local Hub server.
    assert _snapshot(repo_id, olah_hub.url, tmp_path / "cache1") == files

    # The upload server answers the reads push_to_hub makes (diffusers' model-card lookup).
    readme = hf_hub_download(repo_id, "README.md", endpoint=upload_hub.url, token=upload_hub.token,
                             cache_dir=tmp_path / "cache2")
    assert Path(readme).read_text() == README
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.txt", endpoint=upload_hub.url, token=upload_hub.token,
                        cache_dir=tmp_path / "cache2")

    # Unchanged files are skipped (preupload returns their oid); deletions are committed.
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src")
    assert len(upload_hub.commits_for(repo_id)) == 1
    api.delete_file("blob130.bin", repo_id=repo_id)
    assert upload_hub.commits_for(repo_id)[-1].deleted_files == ["blob130.bin"]
    del files["blob130.bin"]
    assert _snapshot(repo_id, olah_hub.url, tmp_path / "cache3") == files

    # ModelCard.load has no endpoint argument: run it where HF_ENDPOINT is olah's URL.
    code = ("import json; from huggingface_hub import ModelCard; "
            f"card = ModelCard.load({repo_id!r}); print(json.dumps(card.data.to_dict()))")
    env = {**os.environ, "HF_ENDPOINT": olah_hub.url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    card_data = json.loads(out.stdout.strip().splitlines()[-1])
    assert card_data["library_name"] == "diffusers" and card_data["tags"] == ["ddpm"]
