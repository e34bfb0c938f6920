"""The shared verify helpers (molecule/shared/tests/conftest.py), loaded for what they do on
import: testinfra's docker backend runs a command again when the engine failed to start it."""

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests", "conftest.py")
_SPEC = importlib.util.spec_from_file_location("kit_shared_conftest", _PATH)
_SHARED = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SHARED)
