"""Helpers shared by the verify tests of every scenario (each conftest imports them whole): hosts
by inventory group, and running Celery clients."""

import json
import os
import re
import shlex
import subprocess
import threading
import time

import pytest
import testinfra.backend.docker
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])

VENV = "/opt/celery/current/venv"
APP_DIR = "/opt/celery/current/app"
KIT_DIR = "/opt/celery/kit/celery_kit"
ENV_FILE = "/etc/celery-kit/environment"
# Runs the rest of its command line as the celery user with the app's environment loaded, as
# the kit's units and helpers run (celery_kit_python in roles/celery/vars/main.yml).
AS_CELERY = "runuser -u celery -- /bin/sh -c 'set -a; . \"$0\"; set +a; exec \"$@\"' %s" % ENV_FILE


# Under load, the Docker engine sometimes fails to start an exec at all: "failed to start io pipe
# copy: unable to copy pipes: containerd-shim: opening w/o fifo ... context deadline exceeded"
# (exit 126; containerd/containerd#4068, #11033). The command never ran, so it is run again; it
# failed one CI run's verify of the default scenario, on a `stat` of a file.
_docker_run = testinfra.backend.docker.DockerBackend.run


def _run_again_when_the_exec_did_not_start(self, command, *args, **kwargs):
    for attempt in range(4):
        out = _docker_run(self, command, *args, **kwargs)
        if out.rc != 126 or "context deadline exceeded" not in out.stdout + out.stderr:
            return out
        time.sleep(1 + attempt)
    return out


testinfra.backend.docker.DockerBackend.run = _run_again_when_the_exec_did_not_start


def hosts_in(group):
    return RUNNER.get_hosts(group)


def inventory_vars(name):
    return RUNNER.get_variables(name)


# The broker the scenario's inventory chose (group_vars/all).
BROKER = inventory_vars(hosts_in("brokers")[0]).get("celery_broker", "redis")
# Python that binds `app` to the deployed app, found from CELERY_APP as Celery finds it.
IMPORT_APP = "from celery.app.utils import find_app; app = find_app(%r)" % (
    inventory_vars(hosts_in("celery_workers")[0]).get("celery_app_module", "proj"))


def host_of(name):
    return testinfra.get_host(
        "ansible://%s" % name, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"]
    )


ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def playbook(*args, timeout=900):
    """ansible-playbook ARGS from the kit's root against the scenario's inventory, uncoloured."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory",
               ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]] + list(args),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    proc.stdout = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    return proc


def run_client(host, code, timeout=90):
    """Run Python code as the celery user with the deployed app importable; return its JSON."""
    cmd = "cd %s && timeout %d %s %s/bin/python -c %s" % (APP_DIR, timeout, AS_CELERY, VENV, shlex.quote(code))
    out = host.run(cmd)
    assert out.rc == 0, "client failed (rc=%s):\n%s\n%s" % (out.rc, out.stdout, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def kill_9_during_a_task(host, unit, number, while_waiting=None):
    """From host, sends proj.tasks.record(number, 6) to the hipri queue, which the node of unit
    alone consumes; 3 s later, as the node runs it, kills the node's main process with kill -9,
    and calls while_waiting(old_pid, killed_at) while the client waits for the result. Returns
    the old main PID and the seconds from the kill to the result."""
    old = host.check_output("systemctl show -p MainPID --value %s" % unit)
    assert old not in ("", "0"), "%s is not running" % unit
    box = {}

    def client():
        box["done"] = run_client(host, "\n".join([
            "import json, time",
            "from proj.tasks import record",
            "record.apply_async((%d, 6), queue='hipri').get(timeout=180)" % number,
            "print(json.dumps(time.time()))"]), timeout=200)

    sender = threading.Thread(target=client)
    sender.start()
    time.sleep(3)  # the task runs on the node
    killed = float(host.check_output("kill -9 %s && date +%%s.%%N" % old))
    if while_waiting:
        while_waiting(old, killed)
    sender.join()
    assert "done" in box, "the client got no result"
    return old, box["done"] - killed


def app_queues(entries):
    """The queue names of a node's `inspect active_queues` entries, without its own worker_direct
    queue (NAME.dq2, exchange C.dq2: the watchdog's), which every node reads."""
    return sorted(q["name"] for q in entries or [] if (q.get("exchange") or {}).get("name") != "C.dq2")


def broadcast(method, expected=None, deadline=60):
    """A control broadcast (ping, or an inspect method such as stats) through the deployed
    broker: node name -> reply. A busy node can miss one round's reply window, so it asks again,
    keeping every reply, until each of the expected nodes (default: the inventory's) answered or
    the deadline passed."""
    if expected is None:
        expected = {"%s@%s" % (node, name) for name in hosts_in("celery_workers") for node in worker_nodes(name)}
    call = "app.control.ping(timeout=5)" if method == "ping" else "app.control.inspect(timeout=10).%s()" % method
    code = ("import json; %s; r = %s; "
            "r = {k: v for d in r for k, v in d.items()} if isinstance(r, list) else (r or {}); "
            "print(json.dumps(r))" % (IMPORT_APP, call))
    replies, until = {}, time.time() + deadline
    while True:
        replies.update(run_client(host_of(hosts_in("celery_workers")[0]), code))
        if set(expected) <= set(replies) or time.time() > until:
            return replies
        time.sleep(2)


def worker_nodes(name):
    """The node names the inventory gives a worker host (the role's default is worker1): a
    count N means celery1 .. celeryN; a name's part after '@' is not part of the unit name."""
    nodes = inventory_vars(name).get("celery_worker_nodes", ["worker1"])
    if isinstance(nodes, int) or (isinstance(nodes, str) and nodes.isdigit()):
        return ["celery%d" % i for i in range(1, int(nodes) + 1)]
    return [(n if isinstance(n, str) else n["name"]).split("@")[0] for n in nodes]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the journal of every host's celery and redis units to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in hosts_in("all"):
            out = host_of(name).run(
                "journalctl --no-pager -n 40 -u 'celery*' -u redis-server -u rabbitmq-server 2>&1")
            report.sections.append(("journal of %s" % name, out.stdout))
