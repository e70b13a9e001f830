"""Asserting a rules-core refusal: its class, its stable reason and its metadata (R42)."""

from __future__ import annotations

import pytest

from service.errors import DomainError


def expect_refusal(cls: type[DomainError], reason: str, call, **metadata: str) -> DomainError:
    """The call raises exactly `cls` with `reason`, and its metadata holds `metadata`."""
    with pytest.raises(DomainError) as info:
        call()
    err = info.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    assert err.reason == reason
    for key, value in metadata.items():
        assert err.metadata.get(key) == value, (key, err.metadata)
    return err
