"""Assertion rewriting for the contract suite, which lives in the package, not under tests/:
its failures then show the compared values like any test's."""

import pytest

pytest.register_assert_rewrite("src.infra.backup.storage.testing.contract")
