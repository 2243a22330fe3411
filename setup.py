"""The one compiled part of fs_cdr: fs_cdr._hangup, the fast path for splitting hangup events and
building their records' columns.

Optional: where it cannot be built (no compiler, no Python headers) fs_cdr installs without it and
decodes every event in Python (``python fs_cdr status`` shows which path runs). Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fs_cdr._hangup", ["fs_cdr/_hangup.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
