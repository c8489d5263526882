"""MkDocs hooks: the results folders served with the site, repository-relative links, and the docs' markers shown.

- `training/results/` and `benchmarks/results/` are added to the site under the same paths, so a page links a
  study's results file or figure where the command wrote it; nothing is copied into docs/ (one copy, no drift).
- Pages write links as they are in the repository (`../../training/results/guidance/study.md` from
  docs/results/), which GitHub follows; links that reach a results folder are rewritten for the site.
- The markers that `tests/test_docs.py` checks are shown on the site: `<!-- not-run: REASON -->` above a Python
  block, `<!-- results: PATH ... -->` and `<!-- no-results-file: REASON -->` above a table.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIRS = ("training/results", "benchmarks/results")
LINK = re.compile(r"(\]\()([^)\s]+)(\))")
MARKER = re.compile(r"^<!-- (not-run|results|no-results-file): (.+?) -->$", re.MULTILINE)


class ResultsFile(File):
    """A results file served as it is: a results.md is shown as the text a command wrote, not rendered as a page
    (its links point at grids that some runs did not keep)."""

    def is_documentation_page(self) -> bool:
        return False


def on_files(files, config):
    for folder in RESULTS_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file():
                uri = path.relative_to(ROOT).as_posix()
                files.append(ResultsFile.generated(config, uri, abs_src_path=str(path),
                                                   inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def _site_link(target: str, page_dir: str) -> str:
    """`target`, written relative to the page's place in the repository (docs/`page_dir`), for the site."""
    if "://" in target or target.startswith(("#", "/", "mailto:")):
        return target
    path, hash_, anchor = target.partition("#")
    repo_path = posixpath.normpath(posixpath.join("docs", page_dir, path))
    if not repo_path.startswith(RESULTS_DIRS):
        return target
    return posixpath.relpath(repo_path, posixpath.join(page_dir) or ".") + hash_ + anchor


def on_page_markdown(markdown, page, config, files):
    page_dir = posixpath.dirname(page.file.src_uri)

    def show(m: re.Match) -> str:
        kind, text = m.group(1), m.group(2).strip()
        if kind == "not-run":
            return f"{m.group(0)}\n*Not run by the tests: {text}.*\n"
        if kind == "no-results-file":
            return f"{m.group(0)}\n*No results file: {text}.*\n"
        links = ", ".join(f"[`{p}`]({posixpath.relpath(p, page_dir or '.')})" for p in text.split())
        return f"{m.group(0)}\nResults file: {links}\n"

    markdown = MARKER.sub(show, markdown)
    return LINK.sub(lambda m: m.group(1) + _site_link(m.group(2), page_dir) + m.group(3), markdown)
