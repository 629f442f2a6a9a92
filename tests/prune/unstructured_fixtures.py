"""Fixtures of the unstructured pruning tests (imported by them: a `conftest.py` here would shadow
`tests/conftest.py` for tests that import it by module name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from torchslim.metrics.latency import threads


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    with threads(1):
        yield
