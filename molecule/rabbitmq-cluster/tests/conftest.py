"""The shared verify helpers (molecule/shared/tests/kit_verify.py), re-exported whole: this
scenario's tests import them from `conftest`, and a failure still attaches the journals."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests"))

from kit_verify import *  # noqa: E402,F401,F403
