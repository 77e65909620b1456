"""The real bundled teacher, loaded once per test session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def real_teacher():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kdistill.models.loading import load_causal_lm

    return load_causal_lm("smollm2-135m", frozen=True)
