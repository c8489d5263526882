"""The README and docs/ can't drift: their Python runs, their commands parse, their tables match the results files.

Markers (the line right before a fenced block or a table; docs/contributing.md explains them to writers):

- `<!-- not-run: REASON -->` before a ```python block: not run (the site shows the reason);
  `<!-- run: slow -->`: run in the slow tier; no marker: run in the fast tier. A page's runnable blocks run in
  order in one namespace, in a folder holding a small class-conditional pipeline with a guide as `outputs/mnist`,
  a `digit.png` and a local Hub for pushes.
- Every `ddpm-ext` / `python -m ddpm_ext` / `python training/*.py` / `python benchmarks/*.py` /
  `accelerate launch` command of a ```bash block has its flags parsed by the command's own parser.
- `<!-- results: PATH ... -->` before a table: every number of the table (outside code spans and links) is one of
  those files' numbers, rounded as shown (or that number in percent); `<!-- unmeasured: REASON -->` for a table
  of names or defaults; `<!-- no-results-file: REASON -->` for a measurement whose run kept no file.
- Every relative link and image of the README and the pages exists.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from accelerate.commands.launch import launch_command_parser
from PIL import Image

from ddpm_ext import DDPMExtPipeline, DDPMExtScheduler, build_unet
from ddpm_ext.commands.cli import main as ddpm_ext_main
from ddpm_ext.pipelines.guidance import AUTOGUIDANCE_SCALE_KEY, set_class_names
from ddpm_ext.training import flags

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^<!-- ([a-z-]+): ?(.*?) -->$")
BLOCK_MARKERS = {"not-run", "run"}
TABLE_MARKERS = {"results", "unmeasured", "no-results-file"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --------------------------------------------------------------------------- #
# Reading the pages
# --------------------------------------------------------------------------- #
@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: tuple[str, str] | None  # (kind, text) of the marker line right above, if any

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def _marker(lines: list[str], index: int) -> tuple[str, str] | None:
    """The marker on line `index` (0-based), if that line is one."""
    if index < 0:
        return None
    m = MARKER.match(lines[index].strip())
    return (m.group(1), m.group(2).strip()) if m else None


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    lines = text.split("\n")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start())
        out.append(Block(page, line + 1, m.group(1), m.group(2), _marker(lines, line - 1)))
    return out


def without_code(text: str) -> str:
    """The page with fenced blocks blanked (keeping line numbers)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


@dataclass
class Table:
    page: Path
    line: int
    rows: list[list[str]]  # body rows, cells stripped (header and separator dropped)
    marker: tuple[str, str] | None

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def tables(page: Path) -> list[Table]:
    lines = without_code(page.read_text()).split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1].strip()):
            start = i
            i += 2
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]
                rows.append([c.strip() for c in cells])
                i += 1
            out.append(Table(page, start + 1, rows, _marker(lines, start - 1)))
        else:
            i += 1
    return out


# --------------------------------------------------------------------------- #
# Numbers of a table against its results files
# --------------------------------------------------------------------------- #
CELL_NUMBER = re.compile(r"(?<![\w.\-/:=×^])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE]([-+]?\d+))?(%)?(?![\w\-/:])")
FILE_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?|\d+(?:\.\d+)?")


def cell_numbers(cell: str) -> list[tuple[str, float, float, bool]]:
    """(text, value, half of the last shown digit, is percent) of every number a table cell quotes."""
    cell = re.sub(r"`[^`]*`", " ", cell)  # code: flags and names, not measurements
    cell = re.sub(r"\]\([^)]*\)", "]", cell)  # link targets
    out = []
    for m in CELL_NUMBER.finditer(cell.replace("*", "")):
        whole, frac, exp, pct = m.groups()
        decimals = len(frac) - 1 if frac else 0
        scale = 10.0 ** int(exp) if exp else 1.0
        value = float(whole.replace(",", "") + (frac or "")) * scale
        out.append((m.group(0), value, 0.5 * 10.0 ** -decimals * scale, bool(pct)))
    return out


def file_numbers(paths: list[Path]) -> list[float]:
    values = set()
    for path in paths:
        text = path.read_text()
        for m in FILE_NUMBER.finditer(text):
            values.add(float(m.group(0).replace(",", "")))
        for m in re.finditer(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text):  # without thousands grouping too
            values.add(float(m.group(0)))
    return sorted(values)


def is_quoted(value: float, half_step: float, percent: bool, known: list[float]) -> bool:
    tol = half_step * (1 + 1e-9) + 1e-12
    if percent:  # 60% is the file's 0.6 or its 60
        return any(abs(k * 100 - value) <= tol or abs(k - value) <= tol for k in known)
    return any(abs(k - value) <= tol for k in known)


# --------------------------------------------------------------------------- #
# Tests: structure
# --------------------------------------------------------------------------- #
def test_readme_is_a_short_entry_point_without_dated_study_text():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated study text belongs in docs/results/"
    assert "python -m pytest -q" in text  # the test command .ci/run calls
    for page in ("getting-started", "schedulers", "sampling", "training", "evaluation", "results/index", "speed",
                 "reliability", "differences", "gpu", "contributing"):
        assert f"(docs/{page}.md)" in text, f"the README links docs/{page}.md"


def test_every_page_is_in_the_site_navigation():
    yaml = pytest.importorskip("yaml")

    class _Loader(yaml.SafeLoader):  # mkdocs.yml may carry !!python tags; only nav is read here
        pass

    _Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    in_nav = set()

    def walk(item):
        if isinstance(item, str):
            in_nav.add(item)
        elif isinstance(item, list):
            for x in item:
                walk(x)
        elif isinstance(item, dict):
            for x in item.values():
                walk(x)

    walk(config["nav"])
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages - in_nav == set(), "pages missing from mkdocs.yml's nav"
    assert in_nav - pages == set(), "nav entries without a page"


def test_every_training_flag_is_in_the_training_page():
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    documented = set(re.findall(r"`(--[a-z0-9_]+)", (DOCS / "training.md").read_text()))
    missing = [a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"
               and a.option_strings[0] not in documented]
    assert missing == [], "flags missing from docs/training.md's table of flags"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_and_images_exist(page):
    text = re.sub(r"`[^`\n]*`", "", without_code(page.read_text()))
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == [], f"{rel(page)} links files that do not exist"
    # a figure is a command's output: it lives where the commands write results, never a hand-made copy in docs/
    for target in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
        path = (page.parent / target).resolve().relative_to(ROOT).as_posix()
        assert path.startswith(("training/results/", "benchmarks/results/")), f"{rel(page)}: figure {target}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_test_a_page_names_exists(page):
    """A guarantee backed by `file.py::test_name` (docs/reliability.md, differences.md...) names a test that exists:
    a renamed or removed test cannot leave a page citing it."""
    missing = []
    for file, name in re.findall(r"`(?:tests/)?([\w/]+\.py)::(\w+)", page.read_text()):
        path = ROOT / "tests" / file
        if not path.is_file() or not re.search(rf"^(?:async )?def {name}\(|^class {name}\b", path.read_text(), re.M):
            missing.append(f"{file}::{name}")
    assert missing == [], f"{rel(page)} names tests that do not exist"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_python_block_is_run_or_says_why_not(page):
    for block in blocks(page):
        if block.marker is not None and block.marker[0] in TABLE_MARKERS:
            pytest.fail(f"{block.where}: a table marker above a code block")
        if block.lang in ("py", "pycon"):
            pytest.fail(f"{block.where}: write ```python, the language the snippet tests collect")
        if block.lang != "python" or block.marker is None:
            continue
        kind, text = block.marker
        assert kind in BLOCK_MARKERS, f"{block.where}: unknown marker {kind!r}"
        if kind == "not-run":
            assert text, f"{block.where}: `not-run` needs the reason"
        if kind == "run":
            assert text == "slow", f"{block.where}: `<!-- run: slow -->` is the only run marker"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_table_of_numbers_names_its_results_file(page):
    for table in tables(page):
        numbers = [n for row in table.rows for cell in row for n in cell_numbers(cell)]
        if table.marker is None:
            assert not numbers, (f"{table.where}: a table quoting numbers needs <!-- results: PATH -->, "
                                 "<!-- unmeasured: REASON --> or <!-- no-results-file: REASON --> above it")
            continue
        kind, text = table.marker
        assert kind in TABLE_MARKERS, f"{table.where}: unknown marker {kind!r}"
        assert text, f"{table.where}: the marker needs a reason or a path"
        if kind != "results":
            continue
        paths = [ROOT / p for p in text.split()]
        assert all(p.is_file() for p in paths), f"{table.where}: results file missing: {text}"
        assert all(p.parts[len(ROOT.parts):][:2] in (("training", "results"), ("benchmarks", "results"))
                   for p in paths), f"{table.where}: results files live in training/results or benchmarks/results"
        known = file_numbers(paths)
        absent = [f"{shown!r} (row {i + 1})" for i, row in enumerate(table.rows) for cell in row
                  for shown, value, half, pct in cell_numbers(cell) if not is_quoted(value, half, pct, known)]
        assert absent == [], f"{table.where}: numbers not found in {text}"


def test_the_number_check_catches_a_changed_figure(tmp_path):
    results = tmp_path / "r.md"
    results.write_text("| w | accuracy | KID |\n|---|---|---|\n| 2 | 0.9940 | 27.46 ± 4.62 |\n")
    known = file_numbers([results])
    ok = [n for cell in ("0.994", "27.5 ± 4.6", "99.4%", "102,400") for n in cell_numbers(cell)]
    assert [is_quoted(v, h, p, known) for _, v, h, p in ok] == [True, True, True, True, False]
    assert [t for t, *_ in cell_numbers("`--max_train_steps 1600` bs64-1600 [grid](a/b-3.png) **7.45**")] == ["7.45"]
    wrong = cell_numbers("0.995")[0]
    assert not is_quoted(wrong[1], wrong[2], wrong[3], known)


# --------------------------------------------------------------------------- #
# Tests: bash commands parse
# --------------------------------------------------------------------------- #
class _Parsed(Exception):
    """Raised by the patched `ArgumentParser.parse_args` once the outermost parser has accepted the flags."""


@contextlib.contextmanager
def _stop_after_parsing():
    """`parse_args` and `parse_intermixed_args` (the two calls that reject unknown flags) raise `_Parsed` once the
    outermost call has accepted the flags, so the command never starts its work."""
    depth = 0

    def stopping(original):
        def parse(self, args=None, namespace=None):
            nonlocal depth
            depth += 1
            try:
                result = original(self, args, namespace)
            finally:
                depth -= 1
            if depth == 0:
                raise _Parsed(result)
            return result
        return parse

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stopping(argparse.ArgumentParser.parse_args)), \
            mock.patch.object(argparse.ArgumentParser, "parse_intermixed_args",
                              stopping(argparse.ArgumentParser.parse_intermixed_args)):
        yield


def _parse_error(run) -> str | None:
    """None when `run()` reaches a successful parse_args; else what argparse said."""
    err = io.StringIO()
    with _stop_after_parsing(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = run()
        except _Parsed:
            return None
        except SystemExit as e:
            return f"exit {e.code}: {err.getvalue().strip()[-600:]}"
    return f"returned {result!r} without parsing: {err.getvalue().strip()[-600:]}"


def check_cli(argv: list[str]) -> str | None:
    return _parse_error(lambda: ddpm_ext_main(argv))


def check_script(script: str, argv: list[str]) -> str | None:
    path = ROOT / script
    if not path.is_file():
        return f"{script} does not exist"

    def run():
        with mock.patch.object(sys, "argv", [str(path), *argv]), \
                mock.patch.object(sys, "path", [str(path.parent), *sys.path]):
            return runpy.run_path(str(path), run_name="__main__")

    return _parse_error(run)


def check_accelerate(argv: list[str]) -> str | None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = launch_command_parser().parse_args(argv)
        except SystemExit as e:
            return f"accelerate launch: exit {e.code}: {err.getvalue().strip()[-600:]}"
    if args.module:
        if args.training_script != "ddpm_ext":
            return f"accelerate launch -m {args.training_script}: not a module of this repository"
        return check_cli(args.training_script_args)
    return check_script(args.training_script, args.training_script_args)


def shell_commands(code: str) -> list[list[str]]:
    """The simple commands of a bash block: continuation lines joined, comments dropped, variables of the block's
    own `NAME="..."` lines expanded, split at `&&`, `||`, `;` and `|`."""
    variables: dict[str, str] = {}
    out = []
    for line in code.replace("\\\n", " ").split("\n"):
        for name, value in variables.items():
            line = line.replace(f"${name}", value)
        words = shlex.split(line, comments=True)
        command: list[str] = []
        for word in [*words, "&&"]:
            if word in ("&&", "||", ";", "|"):
                if len(command) == 1 and re.match(r"^[A-Z_]+=", command[0]):
                    name, _, value = command[0].partition("=")
                    variables[name] = value
                elif command:
                    out.append(command)
                command = []
            else:
                command.append(word)
    return out


def check_command(words: list[str]) -> str | None:
    """None if the command's flags parse, or it is not one this test checks (pip, pytest, mkdocs, ...)."""
    while words and re.match(r"^[A-Z_]+=", words[0]):  # environment assignments before the command
        words = words[1:]
    if not words:
        return None
    if words[0] == "ddpm-ext":
        return check_cli(words[1:])
    if words[0] in ("python", "python3"):
        if words[1:3] == ["-m", "ddpm_ext"]:
            return check_cli(words[3:])
        if len(words) > 1 and words[1].endswith(".py"):
            if words[1].startswith(("training/", "benchmarks/")):
                return check_script(words[1], words[2:])
            return f"{words[1]}: only training/*.py and benchmarks/*.py scripts are documented"
        return None
    if words[:2] == ["accelerate", "launch"]:
        return check_accelerate(words[2:])
    return None


BASH_BLOCKS = [b for page in PAGES for b in blocks(page) if b.lang in ("bash", "sh", "shell")]


@pytest.mark.parametrize("block", BASH_BLOCKS, ids=lambda b: b.where)
def test_documented_commands_parse(block, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    failures = [f"{shlex.join(c)}\n    {e}" for c in shell_commands(block.code) if (e := check_command(c)) is not None]
    assert failures == [], f"{block.where}:\n" + "\n".join(failures)


def test_the_command_check_rejects_a_misspelt_flag():
    assert check_cli(["sample", "outputs/mnist", "--num_images", "4"]) is None
    assert "unrecognized arguments: --num_imagez" in check_cli(["sample", "outputs/mnist", "--num_imagez", "4"])
    assert check_script("training/train_ddpm.py", ["--output_dir", "x", "--max_train_steps", "2"]) is None
    misspelt = check_script("training/train_ddpm.py", ["--output_dir", "x", "--max_train_stepz", "2"])
    assert "unrecognized arguments: --max_train_stepz" in misspelt
    assert "invalid choice" in check_accelerate(["--mixed_precision", "fp7", "training/train_ddpm.py"])
    assert shell_commands('A="--x 1"\nddpm-ext sample p $A && echo hi  # note\n') == [
        ["ddpm-ext", "sample", "p", "--x", "1"], ["echo", "hi"]]


# --------------------------------------------------------------------------- #
# Tests: Python blocks run
# --------------------------------------------------------------------------- #
def _save_docs_pipeline(folder: Path) -> None:
    """The stand-in for the main job's `outputs/mnist`: a 4/8-channel UNet at 28x28 conditional on the ten digits, an
    autoguidance guide with w = 3 saved in its config, a cosine T = 1000 scheduler with trailing spacing."""
    unets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        unet = build_unet("tiny", sample_size=28, num_class_embeds=11, block_out_channels=(4, 8),
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        unet.eval()  # smaller than `tiny`: the snippets make thousands of UNet calls
        set_class_names(unet, [str(d) for d in range(10)])
        unets.append(unet)
    unets[1].register_to_config(**{AUTOGUIDANCE_SCALE_KEY: 3.0})
    scheduler = DDPMExtScheduler(num_train_timesteps=1000, beta_schedule="cosine", timestep_spacing="trailing")
    DDPMExtPipeline(unet=unets[0], scheduler=scheduler, guide_unet=unets[1]).save_pretrained(folder)


@pytest.fixture(scope="module")
def docs_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("docs_pipeline") / "mnist"
    _save_docs_pipeline(folder)
    return folder


@pytest.fixture
def docs_workdir(docs_pipeline_dir, tmp_path, monkeypatch):
    shutil.copytree(docs_pipeline_dir, tmp_path / "outputs" / "mnist")
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[6:22, 12:16] = 255  # a "1"
    Image.fromarray(digit, mode="L").save(tmp_path / "digit.png")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDPM_EXT_FID_STATS_DIR", str(tmp_path / "fid_stats"))
    return tmp_path


def _run_blocks(page: Path, *, slow: bool, request) -> dict:
    runnable = [b for b in blocks(page) if b.lang == "python" and (b.marker is None or
                                                                   (slow and b.marker == ("run", "slow")))]
    assert runnable, f"{rel(page)} has no runnable Python block"
    if any("push_pipeline" in b.code for b in runnable):
        hub = request.getfixturevalue("upload_hub")
        mp = request.getfixturevalue("monkeypatch")
        mp.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)  # HfApi() reads it when built
        mp.setenv("HF_TOKEN", hub.token)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102 the docs' own snippets
            except Exception as e:
                raise AssertionError(f"{block.where}: the snippet fails: {type(e).__name__}: {e}") from e
    return namespace


FAST_PAGES = [p for p in PAGES if any(b.lang == "python" and b.marker is None for b in blocks(p))]
SLOW_PAGES = [p for p in PAGES if any(b.lang == "python" and b.marker == ("run", "slow") for b in blocks(p))]


@pytest.mark.parametrize("page", FAST_PAGES, ids=rel)
def test_python_blocks_run(page, docs_workdir, request):
    namespace = _run_blocks(page, slow=False, request=request)
    if page.name == "README.md":  # load, sample, swap, guide, push: each step's result is real
        assert len(namespace["digits"]) == 10 and namespace["digits"][0].size == (28, 28)
        assert type(namespace["pipe"].scheduler).__name__ == "DPMSolverMultistepScheduler"
        assert (docs_workdir / "seven.png").is_file()
        hub = request.getfixturevalue("upload_hub")
        [commit] = hub.commits_for("me/ddpm-mnist")
        assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "guide_unet/config.json"} <= set(
            commit.added)


@pytest.mark.slow
@pytest.mark.parametrize("page", SLOW_PAGES, ids=rel)
def test_python_blocks_run_slow(page, docs_workdir, request):
    _run_blocks(page, slow=True, request=request)


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    import subprocess  # noqa: PLC0415 (only this test)

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "schedulers" / "index.html").is_file()
