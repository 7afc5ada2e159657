"""Sphinx configuration of the zfarm documentation.

Built by tools/run-tests with ``sphinx-build -W --keep-going -b html docs
build-docs``: every warning is an error.  The API pages import the installed
``zfarm`` package (tools/setup.sh installs it into .venv).
"""
import zfarm

project = "zfarm"
author = "the zfarm authors"
copyright = "2026, the zfarm authors"
release = zfarm.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["examples/*.ipynb", "_build"]
# No network at build time: no intersphinx, no remote images.
html_theme = "alabaster"
html_title = f"zfarm {release}"
html_static_path: list = []
html_theme_options = {"description": "Interactive parallel computing for Python on a ZeroMQ task farm"}

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False  # the stdlib docstrings are not reST
