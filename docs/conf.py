"""Sphinx configuration: the site built by ``sphinx-build -W -b html docs docs/_build/html``.

The pages are Markdown (MyST); the API reference is autosummary over the
public names with numpydoc docstrings; the examples gallery runs every
``examples/plot_*.py`` script (sphinx-gallery) and shows its pictures.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

import sklearn_protopnet

sys.path.insert(0, os.path.dirname(__file__))  # docs/_gallery_order.py

# The gallery runs its examples in this process. One intra-op thread, as in
# tests/conftest.py: on small tensors a second thread only adds
# synchronisation, and on a shared machine OpenMP threads waiting for a busy
# core made the examples' fits several times slower. A 2 + 12 epoch fit on 80
# decoy images on 2 cores: 75 s with 2 threads and 14 s with one under a load
# of about 10; 6.4 s and 7.4 s on an idle machine.
torch.set_num_threads(1)

project = "sklearn-protopnet"
author = "the sklearn-protopnet authors"
copyright = "the sklearn-protopnet authors"
release = sklearn_protopnet.__version__
version = release

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py",
                    "auto_examples/*.zip", "auto_examples/*.md5", "**/*.codeobj.json"]
templates_path = ["_templates"]

# MyST: heading anchors so that links like user-guide.md#small-data-sets resolve
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# autodoc / autosummary / numpydoc
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc's sections carry the types
numpydoc_show_class_members = False  # the autosummary template lists them
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "torch": ("https://pytorch.org/docs/stable", None),
}
# The build runs offline in CI: no inventories are fetched, references stay text.
intersphinx_disabled_reftypes = ["*"]
intersphinx_timeout = 1
if os.environ.get("PROTOPNET_DOCS_ONLINE") != "1":
    intersphinx_mapping = {}

# sphinx-gallery: every examples/plot_*.py runs; its figures go into its page
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"/_",  # helpers, not examples
    # a newcomer's order: first fit, reading it, tuning, then the rest
    "within_subsection_order": "_gallery_order.NewcomerOrder",
    "download_all_examples": False,
    "remove_config_comments": True,
    "abort_on_example_error": True,
    "show_memory": False,
    "matplotlib_animations": False,
    "reference_url": {"sklearn_protopnet": None},
    "min_reported_time": 1,
}

# the architecture figure of method.md, drawn by docs/_figures/architecture.py
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn-protopnet {release}"
html_theme_options = {
    "navigation_depth": 2,
    "show_toc_level": 2,
    "header_links_before_dropdown": 4,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
html_sidebars = {"index": [], "installation": [], "changelog": []}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
toc_object_entries_show_parents = "hide"
html_show_sourcelink = False

# matplotlib in a headless build
os.environ.setdefault("MPLBACKEND", "Agg")
warnings.filterwarnings("ignore", message="Matplotlib is currently using agg")
