"""Shared fixtures. Parity comparisons run JAX matmuls at full float32 precision."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _highest_matmul_precision():
    with jax.default_matmul_precision("highest"):
        yield
