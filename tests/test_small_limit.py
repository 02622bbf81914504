"""The small call's lean path uses the same limit as the shared-memory small mode."""

import importlib
from types import SimpleNamespace

import pytest

from collectives import shared_memory

allreduce_module = importlib.import_module("collectives.allreduce")


@pytest.mark.parametrize("ranks", range(2, 17))
def test_small_limit_is_the_small_modes(ranks):
    state = allreduce_module._State(SimpleNamespace(nodes=1, total=ranks))
    limit = state.small_bytes
    assert shared_memory.is_small(limit, ranks) and not shared_memory.is_small(limit + 1, ranks)
    several = allreduce_module._State(SimpleNamespace(nodes=2, total=ranks))
    assert several.small_bytes == -1  # never the lean path across nodes
