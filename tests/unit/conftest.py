"""Fast in-process tests of the kit's plugins (no ansible-playbook, no containers).

The filter plugins live in the roles' filter_plugins directories, which are not Python
packages: each is loaded here by file path."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_plugin(name, relpath):
    """Import the module at ROOT/relpath under the given name."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def worker():
    return load_plugin("celery_worker_filters", "roles/celery_worker/filter_plugins/celery_worker.py")


@pytest.fixture(scope="session")
def app():
    return load_plugin("celery_app_filters", "roles/celery_app/filter_plugins/celery_app.py")


@pytest.fixture(scope="session")
def root():
    return ROOT


@pytest.fixture(scope="session")
def redis():
    return load_plugin("redis_broker_filters", "roles/redis_broker/filter_plugins/redis_broker.py")
