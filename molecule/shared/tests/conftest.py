"""The verify helpers (kit_verify.py), as the default scenario's conftest. Each other scenario's
conftest imports them the same way, so its tests import their helpers from `conftest` and a
failure still attaches the journals (pytest_runtest_makereport)."""

from kit_verify import *  # noqa: F401,F403
