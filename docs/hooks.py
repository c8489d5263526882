"""MkDocs hook: serve the measured results (training/results/, benchmarks/results/) with the site.

The docs link a study's results file or figure where a repo command wrote it, e.g.
`../training/results/guidance/study.md` from a page in docs/; this hook adds those folders to the site under the
same paths, so the links work on the site and nothing is copied into docs/ (one copy, no drift).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel


class ResultsFile(File):
    """A results file served as it is: a results.md is shown as the text a command wrote, not rendered as a page
    (its links point at grids that some runs did not keep)."""

    def is_documentation_page(self) -> bool:
        return False

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIRS = ("training/results", "benchmarks/results")


def on_files(files, config):
    for folder in RESULTS_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                uri = path.relative_to(ROOT).as_posix()
                files.append(ResultsFile.generated(config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV))
    return files
