"""Helpers shared by the verify tests: hosts by inventory group, and running Celery clients."""

import json
import os
import shlex

import pytest
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])

VENV = "/opt/celery/venv"
APP_DIR = "/opt/celery/app"


def hosts_in(group):
    return RUNNER.get_hosts(group)


def inventory_vars(name):
    return RUNNER.get_variables(name)


def host_of(name):
    return testinfra.get_host(
        "ansible://%s" % name, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


def run_client(host, code, timeout=90):
    """Run Python code as the celery user with the deployed app importable; return its JSON."""
    cmd = "cd %s && timeout %d runuser -u celery -- %s/bin/python -c %s" % (
        APP_DIR, timeout, VENV, shlex.quote(code))
    out = host.run(cmd)
    assert out.rc == 0, "client failed (rc=%s):\n%s\n%s" % (out.rc, out.stdout, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worker_nodes(name):
    """The node names the inventory gives a worker host (the role's default is worker1)."""
    nodes = inventory_vars(name).get("celery_worker_nodes", ["worker1"])
    return [n if isinstance(n, str) else n["name"] for n in nodes]


@pytest.fixture(autouse=True)
def journal_on_failure(host, request):
    """On a failure, show the journal of the host's celery and redis units."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        out = host.run("journalctl --no-pager -n 60 -u 'celery*' -u redis-server")
        print("---- journal of %s ----\n%s" % (host.backend.get_hostname(), out.stdout))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
