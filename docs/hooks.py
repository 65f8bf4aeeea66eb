"""MkDocs hooks: the committed results/ join the site, and the API page must list exactly ``pmdrop.__all__``.

- Every file of ``results/`` is added to the site under ``results/``, so the guides link the report, its tables and its
  plots by the same relative path (``../results/claims.md``) that works on GitHub, and a broken one fails the build.
- ``docs/api.md`` must hold one ``::: pmdrop.NAME`` entry per name of ``pmdrop.__all__`` (read from the source, not
  imported) and no other: a public name without an entry, or an entry for a name no longer public, fails the build.
- Sphinx roles in docstrings (``:class:`X```) are shown as plain code.
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files, InclusionLevel
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.pmdrop")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
API_PAGE = "api.md"
API_ENTRY = re.compile(r"^::: pmdrop\.(\w+)\s*$", re.MULTILINE)
SPHINX_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):(?=<code>)")


def public_names() -> list[str]:
    """``pmdrop.__all__`` as written in pmdrop/__init__.py."""
    tree = ast.parse((ROOT / "pmdrop" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise ValueError("pmdrop/__init__.py defines no __all__")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in sorted(p for p in RESULTS.rglob("*") if p.is_file()):
        uri = path.relative_to(ROOT).as_posix()
        dest = File(uri, None, config.site_dir, config.use_directory_urls).dest_uri
        # Outside docs_dir, so its path starts with "../", which MkDocs would exclude as a hidden file: not in the nav.
        files.append(File("../" + uri, config.docs_dir, config.site_dir, config.use_directory_urls, dest_uri=dest,
                          inclusion=InclusionLevel.NOT_IN_NAV))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if page.file.src_uri == API_PAGE:
        listed = API_ENTRY.findall(markdown)
        public = public_names()
        for name in sorted(set(public) - set(listed)):
            log.warning(f"{API_PAGE}: pmdrop.{name} is in pmdrop.__all__ but has no '::: pmdrop.{name}' entry")
        for name in sorted(set(listed) - set(public)):
            log.warning(f"{API_PAGE}: '::: pmdrop.{name}' is not in pmdrop.__all__")
        for name in sorted({n for n in listed if listed.count(n) > 1}):
            log.warning(f"{API_PAGE}: '::: pmdrop.{name}' appears more than once")
    return markdown


def on_page_content(html: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    return SPHINX_ROLE.sub("", html)
