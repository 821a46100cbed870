"""Sphinx configuration: ``sphinx-build -W -b html docs docs/_build/html``."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import captum_influence_patterns  # noqa: E402

project = "captum-influence-patterns"
author = "captum-influence-patterns contributors"
copyright = "2025, captum-influence-patterns contributors"
release = captum_influence_patterns.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# _static holds generated files (figures, report pages), not pages of the docs.
exclude_patterns = ["_build", "_static", "Thumbs.db", ".DS_Store"]

# Markdown: $...$ maths, ::: fences, and anchors for "#section" links within pages.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "alabaster"
html_title = f"captum-influence-patterns {release}"
