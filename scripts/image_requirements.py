"""Print the requirements of pyproject.toml's dependencies and of the named extras, one per line.

The images install these in a layer of their own, before the code, so that a code change does not
reinstall them (Containerfile). Standard library only: it runs on the bare base image.

Usage: python3 image_requirements.py PYPROJECT [EXTRA ...]
"""

from __future__ import annotations

import sys
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    """The project's dependencies followed by those of `extras`.

    Raises:
        KeyError: an extra the project does not declare.
    """
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    optional = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(line for extra in extras for line in optional[extra])]


if __name__ == "__main__":
    sys.stdout.write("".join(f"{line}\n" for line in requirements(sys.argv[1], sys.argv[2:])))
