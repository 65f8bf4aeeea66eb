"""Fixtures shared by the core's tests."""

import pytest

import pmdrop.functional as functional


@pytest.fixture(params=["hooks", "in_place"])
def eager_path(request, monkeypatch):
    """Both eager paths of the noise route: saved-tensor hooks (small inputs) and the in-place Function (large)."""
    if request.param == "in_place":
        monkeypatch.setattr(functional, "_IN_PLACE_FROM_BYTES", 0)
    return request.param
