"""setuptools glue for the cffi extension qpipe._lib (qpipe/_build.py);
the metadata is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["qpipe/_build.py:ffibuilder"])
