"""The shared verify helpers (molecule/shared/tests/conftest.py), loaded under another module
name: this scenario's tests import them from here, and a failure still attaches the journals."""

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests", "conftest.py")
_SPEC = importlib.util.spec_from_file_location("kit_shared_conftest", _PATH)
_SHARED = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SHARED)

broadcast = _SHARED.broadcast
host_of = _SHARED.host_of
hosts_in = _SHARED.hosts_in
playbook = _SHARED.playbook
run_client = _SHARED.run_client
AS_CELERY = _SHARED.AS_CELERY
APP_DIR = _SHARED.APP_DIR
VENV = _SHARED.VENV
pytest_runtest_makereport = _SHARED.pytest_runtest_makereport
