"""Shared state: one small protocol, an in-memory and a Redis implementation."""

from gateway.store.base import Store

__all__ = ["Store"]
