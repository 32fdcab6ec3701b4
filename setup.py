"""Packaging beyond what pyproject.toml can say: profiles/ and compose_templates/ stay at the top
of the repository, and the wheel and sdist carry them inside the package as deployer/data/<name>/
(read through deployer/resources.py). The package list is found, so new subpackages ship too."""

from setuptools import find_namespace_packages, setup

SHIPPED = {"profiles": "*.yaml", "compose_templates": "*.j2"}

setup(
    packages=[
        *find_namespace_packages(include=["deployer", "deployer.*"], exclude=["*.__pycache__"]),
        *(f"deployer.data.{name}" for name in SHIPPED),
    ],
    package_dir={f"deployer.data.{name}": name for name in SHIPPED},
    package_data={
        "deployer": ["py.typed", "data/*.yaml", "data/*.json"],  # json: shipped_yaml.py
        "deployer.cli": ["help.txt"],  # what `qwen-deploy --help` prints without importing click
        # Everything in the stand-in's build context: its Dockerfile, data files, sources.
        "deployer.standin": ["*", "**/*"],
        "deployer.gateway": ["docker/Dockerfile.*"],  # the gateway image's build files
        **{f"deployer.data.{name}": [pattern] for name, pattern in SHIPPED.items()},
    },
    exclude_package_data={"": ["*.pyc"]},
)
