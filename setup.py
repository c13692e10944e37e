"""Everything about the build that pyproject.toml cannot say (the rest is there).

Packages are found automatically, so a new subpackage (mglrud.render, ...) is never left out of
a wheel again. The BPF programs stay in bpf/ at the top of the checkout (loaded from there by a
checkout) and ship inside the package as `mglrud.bpf` package data; mglrud/programs.py finds
them in either place.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mglrud", "mglrud.*"]) + ["mglrud.bpf"],
    package_dir={"mglrud.bpf": "bpf"},
    package_data={"mglrud.bpf": ["*.bpf.c", "*.h"]},
)
