"""Fixtures shared with the integration tests."""

from tests.integration.executor.conftest import data_root
from tests.integration.scheduler.conftest import tiny_data

__all__ = ["data_root", "tiny_data"]
