"""Fixtures shared with the executor integration tests."""

from tests.integration.executor.conftest import data_root

__all__ = ["data_root"]
