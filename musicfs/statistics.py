"""The statistics convention (as trio's ``statistics()``): every component that counts
answers ``statistics()`` with a frozen dataclass -- a snapshot whose fields are its
counters and gauges, safe to keep, compare and enumerate (``musicfs status``, the
metrics, the benches read the same objects).

A component counts in a plain mutable dataclass (``...Counters``) on its hot path; the
snapshot holds a copy of it, so a counter has one definition.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import asdict
from typing import Any, TypeVar

C = TypeVar("C")


def snapshot(counters: C) -> C:
    """A copy of a counters dataclass that later counting does not change."""
    return copy.deepcopy(counters)


def report(statistics: Any) -> dict[str, Any]:
    """A statistics dataclass as JSON-able data (enums as their values)."""
    return {key: _plain(value) for key, value in asdict(statistics).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
