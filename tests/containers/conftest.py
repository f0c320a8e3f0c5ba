"""Fixtures of the container tests (`make e2e-containers`): the images `make images` built."""

from __future__ import annotations

import pytest

from tests.containers.podman import built_images


@pytest.fixture(scope="session")
def images() -> dict[str, dict]:
    """The built images: name -> reference, build seconds and size, checked against podman's store."""
    return built_images()
