"""The model card: Hub metadata that tells the truth (data sets, license, base model), the final loss, a usage
snippet that runs for the trained model, and the metrics markers `ddpm-ext evaluate` replaces."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from diffusers import DDPMPipeline

from ddpm_ext import DDIMExtScheduler, DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.evaluation import report
from ddpm_ext.hub import model_card, write_model_card
from ddpm_ext.hub.model_card import code_span
from ddpm_ext.pipelines.guidance import set_class_names

ARGS = {"seed": 0, "eval_batch_size": 4, "ddpm_num_inference_steps": 100, "use_ema": True, "ema_max_decay": 0.999,
        "loss_type": "simple", "model_config": "tiny", "hub_token": "hf_must_not_appear", "learning_rate": 2e-3}
ROOT = Path(__file__).resolve().parents[2]
# a fenced Python block: it ends only at a line that is a fence (CommonMark), never at ``` inside a line
SNIPPET = re.compile(r"^```python\n(.*?)^```$", flags=re.DOTALL | re.MULTILINE)
INFO = {"global_step": 12, "final_loss": 0.123456, "num_train_images": 48, "resolution": 16, "num_processes": 1}


@pytest.fixture
def folder(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline_dir, out)
    return out


def card(folder, args=None, **kwargs):
    path = write_model_card(folder, args={**ARGS, **(args or {})}, info=INFO, **kwargs)
    text = path.read_text()
    meta = yaml.safe_load(text.split("---")[1])
    return text, meta


def test_local_image_folder_claims_no_dataset_and_no_license(folder):
    text, meta = card(folder, dataset_name=None, train_data_dir="/home/me/photos")
    assert "datasets" not in meta and "license" not in meta  # today: datasets [imagefolder], license apache-2.0
    assert "a local image folder (not published)" in text and "none stated" in text
    assert "hf_must_not_appear" not in text


def test_builtin_dataset_keeps_its_real_license_and_is_not_a_hub_id(folder):
    text, meta = card(folder, dataset_name="mnist-5k")
    assert meta["license"] == "cc-by-sa-3.0" and "datasets" not in meta  # today: datasets [mnist-5k]
    assert "mnist-5k, built into ddpm_ext" in text and "LeCun" in text


def test_hub_dataset_id_license_flag_and_base_model(folder, tmp_path):
    _, meta = card(folder, dataset_name="someone/faces",
                   args={"hub_license": "mit", "pretrained_model_name_or_path": "google/ddpm-cifar10-32"})
    assert meta["datasets"] == ["someone/faces"] and meta["license"] == "mit"
    assert meta["base_model"] == "google/ddpm-cifar10-32"
    # a local pretrained folder is no Hub id: no base_model
    _, meta = card(folder, dataset_name="someone/faces", args={"pretrained_model_name_or_path": str(tmp_path)})
    assert "base_model" not in meta and "license" not in meta


def test_final_loss_and_metrics_markers(folder):
    text, _ = card(folder, dataset_name="mnist-5k")
    assert "| final training loss | 0.1235 |" in text
    start, end = text.index("<!-- ddpm_ext:metrics:start -->"), text.index("<!-- ddpm_ext:metrics:end -->")
    assert start < end


def test_usage_snippet_runs_for_the_trained_model_from_any_working_directory(folder, tmp_path, monkeypatch):
    """The tiny pipeline has T = 20 (a hard-coded num_inference_steps=100 would raise for it); the snippets load
    the folder's absolute path, so they run from another working directory as they are."""
    text, _ = card(folder, dataset_name="mnist-5k")
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) == 2 and all(f"from_pretrained({str(folder.resolve())!r})" in code for code in snippets)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for code in snippets:
        code = code.replace("batch_size=16", "batch_size=1")  # the snippet as it is, one image for speed
        namespace = {"DDPMExtPipeline": DDPMExtPipeline, "DDIMExtScheduler": DDIMExtScheduler,
                     "DDPMPipeline": DDPMPipeline}
        exec(compile(code, "snippet", "exec"), namespace)  # noqa: S102 the card's own code, on the saved pipeline
        assert len(namespace["images"]) == 1
    assert "num_inference_steps=20)" in text


def test_a_pushed_runs_snippet_loads_the_repo_id(folder):
    text, _ = card(folder, dataset_name="mnist-5k", args={"push_to_hub": True, "hub_model_id": "me/ddpm-tiny"})
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) == 2 and all("from_pretrained('me/ddpm-tiny')" in code for code in snippets)
    assert str(folder.resolve()) not in text and "# ddpm-tiny\n" in text


@pytest.mark.parametrize("bad", ['x"); import os; os.system("touch pwned"); ("', "a/b/c", "my run", "-x", "a--b"])
def test_a_pushed_card_refuses_an_invalid_repo_id(folder, bad):
    message = r"`args\['hub_model_id'\]` must be a Hub repo id .* got " + re.escape(repr(bad))
    with pytest.raises(ValueError, match=message):
        card(folder, dataset_name="mnist-5k", args={"push_to_hub": True, "hub_model_id": bad})
    assert not (folder / "README.md").exists()


def test_the_snippet_quotes_any_path_as_one_python_string(tmp_path, tiny_pipeline_dir):
    """A local folder may be named anything: the snippet holds it as one string literal (repr), never as code."""
    folder = tmp_path / 'x"); import os; os.system("touch pwned"); ("\n```'
    shutil.copytree(tiny_pipeline_dir, folder)
    text, _ = card(folder, dataset_name="mnist-5k")
    for code in SNIPPET.findall(text):
        tree = ast.parse(code)
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and n.module != "ddpm_ext"
                    and n.module != "diffusers"]
        [load] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") ==
                  "from_pretrained" and getattr(n.func.value, "id", "") != "DDIMExtScheduler"]
        assert [a.value for a in load.args] == [str(folder.resolve())]  # one constant: the path itself
    assert "# x\"); import os; os.system(\"touch pwned\"); (\" \\`\\`\\`\n" in text  # the title, escaped


HOSTILE = ["<img src=x onerror=alert(1)>", "[click](https://evil.example)", "**bold** `code` | cell",
           "line\n# heading\n```"]


def test_user_given_names_are_data_in_the_card_never_html_or_markdown(tmp_path):
    """Class-folder names, the data set, the UNet config path and the license: escaped for Markdown and HTML."""
    unet = build_unet("tiny", num_class_embeds=len(HOSTILE) + 1)
    set_class_names(unet, HOSTILE)
    folder = tmp_path / "cond"
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(folder)
    info = {**INFO, "num_classes": len(HOSTILE), "class_names": HOSTILE, "class_dropout_prob": 0.1}
    args = {**ARGS, "model_config": "/cfg/<script>alert(1)</script>.json", "hub_license": "mit<br>"}
    text = write_model_card(folder, args=args, info=info, dataset_name="<b>data</b>").read_text()
    body = text.split("---", 2)[2].replace(model_card.METRICS_START, "").replace(model_card.METRICS_END, "")
    prose = SNIPPET.sub("", body)  # a fenced code block shows its text as it is (the snippet's literals, below)
    assert "<" not in prose and ">" not in prose  # no HTML of any user value survives
    assert "| classes | 4: &lt;img src=x onerror=alert(1)&gt;, \\[click\\](https://evil.example), " \
           "\\*\\*bold\\*\\* \\`code\\` \\| cell, line # heading \\`\\`\\` (null class id 4" in body
    assert "| UNet | /cfg/&lt;script&gt;alert(1)&lt;/script&gt;.json (" in body
    assert "| license | mit&lt;br&gt; |" in body
    assert "a local data set (not published)" in body  # '<b>data</b>' is no Hub id: not linked, not listed
    # no name starts a line: no heading, and the only fences are the snippet's own two
    assert "\n# heading" not in body and len(re.findall(r"^```", body, flags=re.MULTILINE)) == 2
    # the snippet's comment and labels are Python literals: no name leaves its string or its comment
    (code,) = SNIPPET.findall(text)
    tree = ast.parse(code)
    assert [c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str)][:1] == [
        str(folder.resolve())]
    assert f"# the classes: {', '.join(map(repr, HOSTILE))}\n" in code
    assert f"class_labels=[{HOSTILE[0]!r}, {HOSTILE[1]!r}]" in code


def test_template_holds_the_metrics_markers_that_evaluate_replaces():
    text = model_card.TEMPLATE.read_text()
    assert text.count(model_card.METRICS_START) == 1 and text.count(model_card.METRICS_END) == 1
    assert text.index(model_card.METRICS_START) < text.index(model_card.METRICS_END)
    assert (report.METRICS_START, report.METRICS_END) == (model_card.METRICS_START, model_card.METRICS_END)


def test_conditional_card_names_the_classes_and_its_snippet_samples_a_class(tmp_path):
    unet = build_unet("tiny", num_class_embeds=3)  # 2 classes + the null class
    set_class_names(unet, ["cat", "dog"])
    folder = tmp_path / "cond"
    DDPMExtPipeline(unet=unet, scheduler=DDPMExtScheduler(num_train_timesteps=10)).save_pretrained(folder)
    info = {**INFO, "num_classes": 2, "class_names": ["cat", "dog"], "class_dropout_prob": 0.1}
    args = {**ARGS, "eval_batch_size": 5, "guidance_scale": 1.5}
    text = write_model_card(folder, args=args, info=info, dataset_name=None, train_data_dir="/data/pets").read_text()
    assert "A class-conditional image-generation" in text
    # the training grid: eval_batch_size // K images per class, one row per class (sample_grid_call)
    assert "*4 samples, one row of 2 per class, guidance w = 1.5, 100 respaced DDPM steps, seed 0.*" in text
    assert "class_labels=['cat', 'dog'], guidance_scale=1.5," in text
    assert "| classes | 2: cat, dog (null class id 2, label dropout 0.1) |" in text
    assert "cannot sample it" in text  # vanilla DDPMPipeline never passes labels
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    namespace = {"DDPMExtPipeline": DDPMExtPipeline, "DDIMExtScheduler": DDIMExtScheduler}
    exec(compile(code, "snippet", "exec"), namespace)  # noqa: S102 the card's own code, on the saved pipeline
    assert len(namespace["images"]) == 2  # class_labels=['cat', 'dog']


@pytest.mark.slow  # a fresh Python process importing ddpm_ext and diffusers
def test_the_cards_python_block_copied_into_a_file_runs_from_another_working_directory(folder, tmp_path):
    text, _ = card(folder, dataset_name="mnist-5k")
    code = SNIPPET.findall(text)[0].replace("batch_size=16", "batch_size=1")  # as a reader copies it; one image
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "snippet.py"
    script.write_text(code + "print('images:', len(images), images[0].size)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(script)], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("images: 1 (16, 16)")


@pytest.mark.parametrize("value, span", [
    ("fixed_large", "`fixed_large`"),  # config names shown as written: no backslash before the underscore
    ("a`b", "``a`b``"),  # the fence outlasts the value's backticks, so the span cannot end early
    ("`x`", "`` `x` ``"),  # a value starting or ending with a backtick is padded (CommonMark strips one space)
    ("<img src=x onerror=alert(1)>\n# h", "`<img src=x onerror=alert(1)> # h`"),  # in a code span: literal text
])
def test_code_span_shows_a_config_value_verbatim_and_inert(value, span):
    assert code_span(value) == span


def test_the_cards_scheduler_names_are_shown_as_written(folder):
    # variance_type and prediction_type are config names: verbatim in code spans, not backslash-escaped text
    text, _ = card(folder, dataset_name="mnist-5k")
    assert "| variance σ_t² | `fixed_small` |" in text and "| prediction | `epsilon` |" in text
    assert "fixed\\_small" not in text
