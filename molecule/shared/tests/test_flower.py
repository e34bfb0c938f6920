"""Flower, on its own host: closed without credentials, and with them a real browser sees every
deployed worker online and a task sent through the broker as succeeded."""

import json
import os
import urllib.error
import urllib.request

import pytest

from conftest import host_of, hosts_in, inventory_vars, run_client, worker_nodes

FLOWER = hosts_in("flower")
pytestmark = pytest.mark.skipif(not FLOWER, reason="no host in the flower group")

ARTIFACTS = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "artifacts",
                         os.environ.get("MOLECULE_SCENARIO_NAME", "molecule"))


def flower_url():
    host = host_of(FLOWER[0])
    address = host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]
    return "http://%s:5555/" % address


def credentials():
    return "admin", inventory_vars(FLOWER[0])["vault_celery_flower_password"]


def test_flower_runs_as_celery_and_starts_at_boot():
    host = host_of(FLOWER[0])
    svc = host.service("celery-flower")
    assert svc.is_running and svc.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value celery-flower")
    assert host.process.get(pid=int(pid)).user == "celery"
    env = host.file("/etc/default/celery-flower")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    # The password is not on the command line.
    assert credentials()[1] not in host.check_output("cat /proc/%s/cmdline | tr '\\0' ' '" % pid)


def test_flower_refuses_requests_without_credentials():
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(flower_url() + "workers", timeout=10)
    assert err.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(flower_url() + "api/workers", timeout=10)
    assert err.value.code == 401


def test_workers_send_task_events_for_flower():
    for name in hosts_in("celery_workers"):
        config = host_of(name).file("/opt/celery/kit/celery_kit/config.py").content_string
        assert "worker_send_task_events = True" in config, name


def test_browser_sees_every_worker_online_and_a_task_succeeded():
    from flower_browser import look

    workers = ["%s@%s" % (node, name) for name in hosts_in("celery_workers")
               for node in worker_nodes(name)]

    def send_task():
        return run_client(host_of(hosts_in("celery_workers")[0]), (
            "import json; from proj.tasks import add; r = add.delay(40, 2); r.get(timeout=60); "
            "print(json.dumps(r.id))"))

    os.makedirs(ARTIFACTS, exist_ok=True)
    user, password = credentials()
    seen = look(flower_url(), user, password, workers, task_id=send_task, shots_dir=ARTIFACTS, timeout=90)
    assert seen["workers"] == {w: "Online" for w in workers}, seen
    assert seen["task"] == "SUCCESS"
    assert os.path.getsize(os.path.join(ARTIFACTS, "flower-workers.png")) > 0
