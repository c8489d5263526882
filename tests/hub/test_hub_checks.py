"""Repo ids checked before any work (the training flags, `ddpm-ext push`, `push_pipeline`), and the pushed card's
usage snippets pointed at the repo."""

from __future__ import annotations

import argparse
import doctest
import re
import shutil
from pathlib import Path

import pytest

from ddpm_ext.commands import cli
from ddpm_ext.commands import push as push_command
from ddpm_ext.hub import push_pipeline, write_model_card
from ddpm_ext.hub.push import check_repo_id

BAD_IDS = ['x"); import os; os.system("touch pwned"); ("', "a/b/c", "my model", "-lead", "a--b", "a..b", "x.git",
           "", "x" * 97]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_an_invalid_hub_model_id_is_refused_before_training(bad, tmp_path, capsys):
    out = tmp_path / "o"
    code = cli.main(["train", "--push_to_hub", f"--hub_model_id={bad}", "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: `--hub_model_id` must be a Hub repo id, 'name' or 'org/name'")
    assert err.rstrip().endswith(f"got {bad!r}.") and not out.exists()


def test_an_output_folder_name_that_is_no_repo_id_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "my run"  # --hub_model_id's default: the folder's name
    assert cli.main(["train", "--push_to_hub", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --push_to_hub without --hub_model_id pushes to the --output_dir folder's name "
                          "'my run', which is not a Hub repo id") and "give --hub_model_id" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", ["0", "-1", "inf", "nan"])
def test_a_bad_hub_push_timeout_is_refused_before_training(bad, tmp_path, capsys):
    code = cli.main(["train", "--push_to_hub", "--hub_model_id", "me/x", "--hub_push_timeout", bad,
                     "--output_dir", str(tmp_path / "o")])
    assert code == 2 and "`--hub_push_timeout` must be a finite number of seconds > 0" in capsys.readouterr().err


def test_valid_ids_pass():
    for good in ("me/ddpm-mnist", "ddpm_mnist.v2", "Org-1/x", "a" * 96):
        assert check_repo_id(good) == good


@pytest.mark.parametrize("bad", BAD_IDS[:3])
def test_a_push_refuses_an_invalid_repo_id_before_any_request(bad, tiny_pipeline_dir, tmp_path):
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    with pytest.raises(ValueError, match=r"`repo_id` must be a Hub repo id"):
        push_pipeline(folder, repo_id=bad, endpoint="http://127.0.0.1:9")  # nothing listens: no request is made
    args = argparse.Namespace(pipeline=str(folder), repo_id=bad, private=False, timeout=60.0, token=None)
    with pytest.raises(ValueError, match=r"`--repo_id` must be a Hub repo id, .* got " + re.escape(repr(bad))):
        push_command.run(args)  # the CLI prints it as `error: ...`, exit status 2


# in process, with the session's local Hub servers (tests/test_hub_servers.py starts them in the fast tier too)
def test_a_push_points_the_cards_snippets_at_the_repo_and_keeps_the_pipelines_code(tiny_pipeline_dir, tmp_path,
                                                                                     upload_hub):
    folder = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, folder)
    write_model_card(folder, args={"seed": 0}, info={}, dataset_name="mnist-5k")  # not pushed: the absolute path
    local = f"from_pretrained({str(Path(folder).resolve())!r})"
    assert (folder / "README.md").read_text().count(local) == 2
    (folder / "pipeline.py").write_text("from ddpm_ext import DDPMExtPipeline  # diffusers' custom pipeline file\n")
    repo = "ddpm-ext-tests/card-snippet"
    push_pipeline(folder, repo_id=repo, token=upload_hub.token, endpoint=upload_hub.url, timeout=60)
    [commit] = upload_hub.commits_for(repo)
    card = commit.added["README.md"].decode()
    assert card.count(f"from_pretrained({repo!r})") == 2 and str(folder.resolve()) not in card
    assert "pipeline.py" in commit.added  # the pipeline's own code travels with it


def test_the_docstring_examples_run():
    from ddpm_ext import network  # noqa: PLC0415
    from ddpm_ext.hub import model_card, push  # noqa: PLC0415

    for module in (push, model_card, network):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0 and result.attempted >= 1, module.__name__
