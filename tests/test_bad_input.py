"""Bad inventories stop in the preflight play, before any host is touched, with a message that
names the variable. The hosts here are containers that do not exist: a run that got past
preflight would fail as unreachable instead, and the test would see it."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GOOD = {
    "ansible_connection": "community.docker.docker",
    "celery_broker": "redis",
    "vault_redis_broker_password": "not-a-real-password-123",
    "redis_broker_password": "{{ vault_redis_broker_password }}",
}


def run_site(tmp_path, all_vars=None, host_vars=None, groups=None):
    groups = groups if groups is not None else {
        "brokers": ["bad-input-broker"],
        "celery_workers": ["bad-input-worker1"],
        "celery_beat": ["bad-input-beat"],
    }
    inventory = {"all": {"vars": dict(GOOD, **(all_vars or {})), "children": {}}}
    for group, hosts in groups.items():
        inventory["all"]["children"][group] = {
            "hosts": {h: (host_vars or {}).get(h, {}) for h in hosts}}
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(path), "site.yml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def assert_stopped_in_preflight(rc, out, *words):
    assert rc != 0, out
    assert "PLAY [Broker tier]" not in out, "got past preflight:\n" + out
    assert "UNREACHABLE" not in out, out
    for word in words:
        assert word in out, "%r not in output:\n%s" % (word, out)


def test_good_inventory_passes_preflight(tmp_path):
    """The control case: the same inventory, valid, gets past preflight (and then finds the
    hosts unreachable)."""
    rc, out = run_site(tmp_path)
    assert rc != 0
    assert "PLAY [Broker tier]" in out, out


@pytest.mark.parametrize("broker", ["rabbit", "kafka", ""])
def test_unknown_broker(tmp_path, broker):
    rc, out = run_site(tmp_path, all_vars={"celery_broker": broker})
    assert_stopped_in_preflight(rc, out, "celery_broker is '%s'" % broker, "redis")


@pytest.mark.parametrize("value", [0, -1, "ten", "2.5", True])
def test_concurrency_not_a_positive_integer(tmp_path, value):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_concurrency": value}})
    assert_stopped_in_preflight(rc, out, "celery_worker_concurrency on bad-input-worker1")


def test_node_concurrency_not_a_positive_integer(tmp_path):
    nodes = [{"name": "worker1", "concurrency": "ten"}]
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_nodes": nodes}})
    assert_stopped_in_preflight(rc, out, "celery_worker_nodes on bad-input-worker1", "'ten'")


def test_no_broker_host(tmp_path):
    groups = {"celery_workers": ["bad-input-worker1"], "celery_beat": ["bad-input-beat"]}
    rc, out = run_site(tmp_path, groups=groups)
    assert_stopped_in_preflight(rc, out, "no host in the 'brokers' group")


def test_two_beat_hosts(tmp_path):
    groups = {"brokers": ["bad-input-broker"], "celery_workers": ["bad-input-worker1"],
              "celery_beat": ["bad-input-beat", "bad-input-beat2"]}
    rc, out = run_site(tmp_path, groups=groups)
    assert_stopped_in_preflight(rc, out, "'celery_beat' group has 2 hosts")


def test_missing_password(tmp_path):
    rc, out = run_site(tmp_path, all_vars={"redis_broker_password": ""})
    assert_stopped_in_preflight(rc, out, "is empty", "set redis_broker_password")


@pytest.mark.parametrize("name", ["worker 1", "w;reboot", "$(id)"])
def test_node_name_with_shell_characters(tmp_path, name):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_nodes": [name]}})
    assert_stopped_in_preflight(rc, out, "celery_worker_nodes on bad-input-worker1")


@pytest.mark.parametrize("queues", [["a,b"], ['q"x'], "celery"])
def test_bad_queue_names(tmp_path, queues):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_queues": queues}})
    assert_stopped_in_preflight(rc, out, "queues")


RABBITMQ = {"celery_broker": "rabbitmq",
            "vault_rabbitmq_broker_password": "not-a-real-password-456",
            "rabbitmq_broker_password": "{{ vault_rabbitmq_broker_password }}"}


def test_good_rabbitmq_inventory_passes_preflight(tmp_path):
    rc, out = run_site(tmp_path, all_vars=RABBITMQ)
    assert "PLAY [Broker tier]" in out, out


def test_rabbitmq_without_password(tmp_path):
    rc, out = run_site(tmp_path, all_vars=dict(RABBITMQ, rabbitmq_broker_password=""))
    assert_stopped_in_preflight(rc, out, "is empty", "set rabbitmq_broker_password")


@pytest.mark.parametrize("vhost", ["/", "my vhost", "a/b", "q'uote", ""])
def test_rabbitmq_bad_vhost(tmp_path, vhost):
    rc, out = run_site(tmp_path, all_vars=dict(RABBITMQ, rabbitmq_broker_vhost=vhost))
    assert_stopped_in_preflight(rc, out, "rabbitmq_broker_vhost is '%s'" % vhost)


def test_time_limit_above_consumer_timeout(tmp_path):
    rc, out = run_site(tmp_path, all_vars=dict(RABBITMQ, rabbitmq_broker_consumer_timeout=600),
                       host_vars={"bad-input-worker1": {"celery_worker_time_limit": 900}})
    assert_stopped_in_preflight(rc, out, "celery_worker_time_limit on bad-input-worker1 is 900",
                                "rabbitmq_broker_consumer_timeout is 600")


def test_time_limit_above_consumer_timeout_set_on_the_broker_host(tmp_path):
    rc, out = run_site(tmp_path, all_vars=RABBITMQ,
                       host_vars={"bad-input-broker": {"rabbitmq_broker_consumer_timeout": 100}})
    assert_stopped_in_preflight(rc, out, "celery_worker_time_limit on bad-input-worker1 is 300",
                                "rabbitmq_broker_consumer_timeout is 100")


def test_time_limit_above_visibility_timeout(tmp_path):
    rc, out = run_site(tmp_path, all_vars={"celery_app_visibility_timeout": 200})
    assert_stopped_in_preflight(rc, out, "celery_worker_time_limit on bad-input-worker1 is 300",
                                "celery_app_visibility_timeout is 200")


@pytest.mark.parametrize("value", [0, "none"])
def test_time_limit_missing(tmp_path, value):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_time_limit": value}})
    assert_stopped_in_preflight(rc, out, "celery_worker_time_limit on bad-input-worker1")


FLOWER_GROUPS = {"brokers": ["bad-input-broker"], "celery_workers": ["bad-input-worker1"],
                 "celery_beat": ["bad-input-beat"], "flower": ["bad-input-flower"]}
FLOWER = {"vault_celery_flower_password": "not-a-real-password-789",
          "celery_flower_password": "{{ vault_celery_flower_password }}"}


def test_good_flower_inventory_passes_preflight(tmp_path):
    rc, out = run_site(tmp_path, all_vars=FLOWER, groups=FLOWER_GROUPS)
    assert "PLAY [Broker tier]" in out, out


def test_flower_without_password(tmp_path):
    rc, out = run_site(tmp_path, groups=FLOWER_GROUPS)
    assert_stopped_in_preflight(rc, out, "celery_flower_password is empty on bad-input-flower")


@pytest.mark.parametrize("password", ["with space", "a,b", "a:b"])
def test_flower_password_flower_would_split(tmp_path, password):
    rc, out = run_site(tmp_path, all_vars=dict(FLOWER, celery_flower_password=password),
                       groups=FLOWER_GROUPS)
    assert_stopped_in_preflight(rc, out, "celery_flower_password")


def test_flower_on_the_broker_port_of_its_host(tmp_path):
    groups = dict(FLOWER_GROUPS, flower=["bad-input-broker"])
    rc, out = run_site(tmp_path, all_vars=FLOWER, groups=groups,
                       host_vars={"bad-input-broker": {"celery_flower_port": 6379}})
    assert_stopped_in_preflight(rc, out, "celery_flower_port on bad-input-broker is 6379",
                                "another tier")
