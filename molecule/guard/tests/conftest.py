"""The shared verify helpers (molecule/shared/tests/conftest.py), loaded under another module
name and re-exported whole: this scenario also runs the shared cluster, RabbitMQ and Flower
tests, which import their helpers from `conftest`."""

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests", "conftest.py")
_SPEC = importlib.util.spec_from_file_location("kit_shared_conftest", _PATH)
_SHARED = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_SHARED)

globals().update({k: v for k, v in vars(_SHARED).items() if not k.startswith("__")})
