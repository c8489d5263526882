"""The on-disk cache of reference statistics: a hit skips loading and extraction, keys and folders."""

from __future__ import annotations

import doctest

import torch
from projection_features import ProjectionFeatures

from ddpm_ext.evaluation import reference_stats as reference_stats_module
from ddpm_ext.evaluation.reference_stats import reference_statistics


def test_reference_statistics_are_cached_and_a_hit_skips_extraction(tmp_path):
    extractor = ProjectionFeatures()
    loads = []
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))

    def load():
        loads.append(1)
        return images

    key = {"dataset": "demo", "split": "test", "image_size": 8}
    first = reference_statistics(load, extractor, key=key, cache_dir=tmp_path, batch_size=4)
    assert not first.cache_hit and len(loads) == 1 and extractor.calls == 3  # 10 images in batches of 4
    assert first.path.parent == tmp_path and first.path.suffix == ".safetensors"
    # batches of 4 vs one of 10: float32 matrix products of other shapes may differ in the last bits
    assert torch.allclose(first.mean, extractor(images).mean(0), rtol=1e-5, atol=1e-6) and first.num_images == 10
    calls = extractor.calls

    again = reference_statistics(load, extractor, key=dict(key), cache_dir=tmp_path)
    assert again.cache_hit and len(loads) == 1 and extractor.calls == calls  # nothing loaded, nothing extracted
    # read back from the file: float64, bit for bit
    assert torch.equal(again.features, first.features) and torch.equal(again.cov, first.cov)
    assert again.key["extractor"] == extractor.identity

    other = reference_statistics(load, extractor, key={**key, "split": "train"}, cache_dir=tmp_path)
    assert not other.cache_hit and other.path != first.path and len(loads) == 2

    first.path.write_bytes(b"garbage")  # a corrupt file is recomputed and rewritten
    redo = reference_statistics(load, extractor, key=key, cache_dir=tmp_path)
    assert not redo.cache_hit and len(loads) == 3
    # extracted again, in batches of 64 rather than 4: float32 features in (-1, 1), equal up to rounding on any CPU
    torch.testing.assert_close(redo.features, first.features, rtol=0, atol=1e-5)
    assert reference_statistics(load, extractor, key=key, cache_dir=tmp_path).cache_hit


def test_reference_statistics_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_EXT_FID_STATS_DIR", str(tmp_path / "stats"))
    stats = reference_statistics(lambda: torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ProjectionFeatures(),
                                 key={"dataset": "zeros"})
    assert stats.path.parent == tmp_path / "stats" and stats.path.is_file()
    nocache = reference_statistics(lambda: torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ProjectionFeatures(),
                                   key={"dataset": "zeros"}, use_cache=False)
    assert not nocache.cache_hit and nocache.path is None


def test_docstring_examples():
    result = doctest.testmod(reference_stats_module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
