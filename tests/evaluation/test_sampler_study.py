"""benchmarks/sampler_study.py on the tiny pipeline: 8 samples, NFE 2-3; resume, per-point saving, refusals."""

from __future__ import annotations

import json

import pytest
from repo_scripts import load_script

from ddpm_ext.evaluation import evaluate as evaluate_module

pytestmark = [
    pytest.mark.filterwarnings("ignore:FID from .* is not a meaningful number"),  # 8 images: on purpose
    # diffusers
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`sklearn.utils.parallel.delayed` should be used"),  # prdc's nearest neighbours
]


@pytest.fixture(scope="module")
def study_module():
    return load_script("benchmarks/sampler_study.py")


def argv(pipeline, out, stats, *extra):
    return [str(pipeline), "--output_dir", str(out), "--stats_cache_dir", str(stats), "--no_progress",
            "--num_samples", "8", "--max_real_images", "16", "--kid_subset_size", "4", "--kid_subsets", "5",
            "--nearest_k", "3", "--batch_size", "8", "--grid_images", "4", *extra]  # fmt: skip


@pytest.mark.slow  # 17 study points sampled and scored, three runs of the study, a plot
def test_study_runs_resumes_and_refuses_other_settings(study_module, tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    out, stats = tmp_path / "study", tmp_path / "stats"
    samplers = ["--samplers", "ddpm-large", "ddim-eta0", "dpmpp", "unipc", "--nfe", "2", "3"]
    assert study_module.main(argv(tiny_pipeline_dir, out, stats, *samplers)) == 0
    study = json.loads((out / "sampler_study.json").read_text())
    rows = {r["sampler"]: r for r in study["points"]}
    assert sorted(rows) == sorted(["ddpm:2:fixed_large", "ddpm:3:fixed_large", "ddim:2:0", "ddim:3:0", "dpmpp:2",
                                   "dpmpp:3", "unipc:2", "unipc:3"])  # fmt: skip
    for r in rows.values():
        assert r["num_fake"] == 8 and r["fid"] > 0 and r["kid_std"] >= 0 and r["seconds_per_image"] > 0
        assert r["timestep_spacing"] == "trailing" and 0 <= r["classes_present"] <= 10  # (tiny: "leading" config)
        assert (out / r["grid"]).is_file()
    assert rows["ddim:2:0"]["use_clipped_model_output"] is True and rows["dpmpp:2"]["use_clipped_model_output"] is None
    assert rows["dpmpp:3"]["x0_clipping"].startswith("clip ±1") and study["reference"]["classifier_is"] > 0
    table = (out / "sampler_study.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| ") and "`" in line]) == 8  # one per point
    assert "| ddim-eta0 | 2 | `ddim:2:0` | trailing | consistent |" in table
    assert (out / "sampler_study.png").stat().st_size > 1000
    assert table.strip() in capsys.readouterr().out

    # resume: only the new points run, the old rows stay as they were
    before = json.loads((out / "sampler_study.json").read_text())["points"]
    assert study_module.main(argv(tiny_pipeline_dir, out, stats, *samplers, "--spacing", "trailing")) == 0
    assert "0 of 8 points already" in capsys.readouterr().out  # an explicit spacing is another spec
    assert study_module.main(argv(tiny_pipeline_dir, out, stats, "--samplers", "ddim-eta0",
                                  "--nfe", "2", "3", "4")) == 0
    assert "2 of 3 points already" in capsys.readouterr().out
    after = json.loads((out / "sampler_study.json").read_text())["points"]
    assert after[: len(before)] == before and len(after) == 8 + 8 + 1

    # other settings are refused, naming them, before any work
    assert study_module.main(argv(tiny_pipeline_dir, out, stats, "--seed", "1")) == 2
    assert "holds a study with other settings (seed: 0 there, 1 now)" in capsys.readouterr().err

    # a run killed after its first point keeps that point
    calls = []
    real = evaluate_module.sample_images

    def dies_at_second(run, spec):
        calls.append(spec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(run, spec)

    monkeypatch.setattr("ddpm_ext.evaluation.evaluate.sample_images", dies_at_second)
    fresh = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        study_module.main(argv(tiny_pipeline_dir, fresh, stats, "--samplers", "ddpm-small", "--nfe", "2", "3"))
    kept = json.loads((fresh / "sampler_study.json").read_text())["points"]
    assert [r["sampler"] for r in kept] == ["ddpm:2:fixed_small"]


def test_nfe_1000_only_for_the_chosen_samplers(study_module):
    args = study_module.parse_args(["p", "--output_dir", "o", "--samplers", "ddpm-small", "dpmpp",
                                    "--nfe", "10", "1000", "--ddim_eps", "model"])  # fmt: skip
    assert study_module.sampler_specs(args) == [("ddpm-small", 10, "ddpm:10:fixed_small"),
                                               ("ddpm-small", 1000, "ddpm:1000:fixed_small"), ("dpmpp", 10, "dpmpp:10")]
    args = study_module.parse_args(["p", "--output_dir", "o", "--samplers", "ddim-eta1", "--nfe", "20",
                                    "--ddim_eps", "model", "--spacing", "leading"])  # fmt: skip
    assert study_module.sampler_specs(args) == [("ddim-eta1", 20, "ddim:20:1:spacing=leading:eps=model")]
    with pytest.raises(SystemExit):
        study_module.parse_args(["p", "--output_dir", "o", "--nfe", "0"])
