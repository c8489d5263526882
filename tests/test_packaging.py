"""A normal (non-editable) install works: build a wheel, install it into a fresh venv, train outside the source tree.

The model-card template is package data; before it was, a `pip install .` crashed at the very end of training in
`write_model_card`. This test builds the wheel from a copy of the sources, installs it with `pip install --no-deps`
into a new virtual environment that reuses this environment's dependencies (torch is not downloaded again), and runs
a 2-step training from a folder outside the source tree with `python -I` (no current folder, no PYTHONPATH on
sys.path). It checks that `ddpm_ext` is imported from the new venv, not from this checkout, and loads the card the
training wrote with huggingface_hub's `ModelCard`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = "ddpm_ext/hub/model_card_template.md"
# The tiny training of tests/training/test_training.py: 8x8 MNIST crops, a tiny UNet, seconds per step.
TINY = ["--model_config", "tiny", "--resolution", "8", "--train_batch_size", "8", "--max_train_samples", "48",
        "--eval_batch_size", "4", "--ddpm_num_inference_steps", "4", "--ddpm_num_steps", "100",
        "--lr_warmup_steps", "2"]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{cmd} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.mark.slow
def test_wheel_installs_trains_and_writes_a_loadable_model_card(tmp_path):
    # 1. the wheel, built from a copy of the sources (the checkout gets no build/ or egg-info)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "ddpm_ext", src / "ddpm_ext", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    # offline with this environment's setuptools when it has one (Python < 3.12 venvs do); else pip's isolated build
    offline = ["--no-build-isolation", "--no-index"] if importlib.util.find_spec("setuptools") else []
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *offline, "-w", str(dist), str(src)], cwd=tmp_path)
    (wheel,) = dist.glob("ddpm_ext-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert TEMPLATE in names, "the model-card template must be package data"
        assert zf.read(TEMPLATE) == (ROOT / TEMPLATE).read_bytes()
        assert "ddpm_ext/py.typed" in names and "ddpm_ext/commands/cli.py" in names

    # 2. a fresh venv with the wheel installed (non-editable) before it can see this environment
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], cwd=tmp_path)
    python = _venv_python(venv)
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # then this environment's packages (torch, diffusers, ...) as plain path entries: their .pth files, such as the
    # editable finder of this checkout's ddpm_ext, are not executed, so they cannot shadow the wheel
    purelib = Path(_run([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        cwd=tmp_path).strip())
    parents = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"],
                             sysconfig.get_paths()["platlib"]])
    (purelib / "zz_parent_environment.pth").write_text("".join(f"{p}\n" for p in parents if Path(p).is_dir()))

    # 3. a 2-step training from a folder outside the source tree, checking where ddpm_ext comes from
    work = tmp_path / "elsewhere"
    work.mkdir()
    out = work / "model"
    driver = textwrap.dedent(f"""
        import runpy, sys
        from pathlib import Path
        import ddpm_ext, ddpm_ext.hub.model_card as card
        venv, source = Path({str(venv)!r}).resolve(), Path({str(ROOT)!r}).resolve()
        where = Path(ddpm_ext.__file__).resolve()
        assert venv in where.parents and source not in where.parents, where
        assert venv in Path(card.TEMPLATE).resolve().parents and Path(card.TEMPLATE).is_file(), card.TEMPLATE
        print("ddpm_ext from", where)
        sys.argv = ["ddpm_ext", "train", *{TINY + ["--max_train_steps", "2", "--output_dir", str(out)]!r}]
        runpy.run_module("ddpm_ext", run_name="__main__", alter_sys=True)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", "1")
    printed = _run([str(python), "-I", "-c", driver], cwd=work, env=env)
    assert f"ddpm_ext from {venv.resolve()}" in printed

    # 4. the card: written at the end of training, loadable by huggingface_hub
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers"
    assert "unconditional-image-generation" in str(card.data.to_dict())
    assert "{{" not in card.text and "DDPM" in card.text
    assert (out / "model_index.json").is_file() and (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
