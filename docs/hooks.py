"""MkDocs hook: serve ``benchmarks/results/`` as ``results/`` in the site.

MkDocs only builds files under ``docs_dir``; the recorded benchmark results live in
``benchmarks/results`` (written there by the benchmark scripts). Adding them here keeps
one copy in the repository, works in a clean clone, and lets ``mkdocs build --strict``
check every link the pages make to them.
"""

from __future__ import annotations

import os

from mkdocs.structure.files import File

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "results")


def on_files(files, config):
    for dirpath, _, names in os.walk(RESULTS):
        for name in sorted(names):
            if not name.endswith((".png", ".md", ".json", ".txt")):
                continue
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, RESULTS).replace(os.sep, "/")
            # The results' markdown is shown as a page of its own; everything else is copied.
            files.append(File.generated(config, f"results/{rel}", abs_src_path=src))
    return files
