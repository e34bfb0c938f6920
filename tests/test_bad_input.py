"""Bad inventories stop in the preflight play, before any host is touched, with a message that
names the variable. The hosts here are containers that do not exist: a run that got past
preflight would fail as unreachable instead, and the test would see it.

With KIT_BAD_INPUT_HOSTS, a JSON map from the host names below to real hosts, the inventories
name those hosts instead: molecule/guard runs this file (and test_quoting.py) so, and checks
that no file on them changed. The cases that pass preflight are skipped then, as they would
deploy.

Each case is one run of `ansible-playbook -i INVENTORY site.yml`, as a fork of a process that has
imported Ansible once (playbook_runner.py) rather than a new process: the same CLI code from
main() on, with its own exit code, output and state, at a fraction of the start-up cost."""

import json
import os
import sys

import pytest

from playbook_runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REAL_HOSTS = json.loads(os.environ.get("KIT_BAD_INPUT_HOSTS") or "{}")
passes_preflight = pytest.mark.skipif(bool(REAL_HOSTS), reason="would deploy onto the real hosts")

GOOD = {
    "ansible_connection": "community.docker.docker",
    "celery_broker": "redis",
    "vault_redis_broker_password": "not-a-real-password-123",
    "redis_broker_password": "{{ vault_redis_broker_password }}",
    "redis_broker_kit_password": "not-a-real-kit-password-123",
    "redis_broker_exporter_password": "not-a-real-exporter-password-123",
}


def run_site(tmp_path, all_vars=None, host_vars=None, groups=None):
    groups = groups if groups is not None else {
        "brokers": ["bad-input-broker"],
        "celery_workers": ["bad-input-worker1"],
        "celery_beat": ["bad-input-beat"],
    }
    inventory = {"all": {"vars": dict(GOOD, **(all_vars or {})), "children": {}}}
    for group, hosts in groups.items():
        members = inventory["all"]["children"][group] = {"hosts": {}}
        for h in hosts:
            members["hosts"].setdefault(REAL_HOSTS.get(h, h), {}).update((host_vars or {}).get(h, {}))
    path = tmp_path / "hosts.yml"
    path.write_text(json.dumps(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_NOCOLOR="1")
    return RUNNER.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(path), "site.yml"],
        cwd=ROOT, env=env, out_dir=tmp_path, timeout=300)


# Runs ansible-playbook for run_site; test_quoting.py shares it through run_site.
RUNNER = Runner()


# The first play after the preflight checks (site.yml).
PAST_PREFLIGHT = "PLAY [The service account on every Celery host]"


def assert_stopped_in_preflight(rc, out, *words):
    assert rc != 0, out
    assert PAST_PREFLIGHT not in out, "got past preflight:\n" + out
    assert "UNREACHABLE" not in out, out
    for word in words:
        for fake in sorted(REAL_HOSTS, key=len, reverse=True):
            word = word.replace(fake, REAL_HOSTS[fake])
        assert word in out, "%r not in output:\n%s" % (word, out)


# The roles' argument specs (roles/*/meta/argument_specs.yml) check each variable's type and,
# for a closed set, its value, in the first task of each role's preflight.yml. Their messages:
def spec_type_error(var, given, wanted):
    return "argument '%s' is of type %s and we were unable to convert to %s" % (var, given, wanted)


def spec_choice_error(var, value):
    return ["value of %s must be one of:" % var, "got: %s" % value]


@passes_preflight
def test_good_inventory_passes_preflight(tmp_path):
    """The control case: the same inventory, valid, gets past preflight (and then finds the
    hosts unreachable)."""
    rc, out = run_site(tmp_path)
    assert rc != 0
    assert PAST_PREFLIGHT in out, out


@pytest.mark.parametrize("broker", ["rabbit", "kafka", ""])
def test_unknown_broker(tmp_path, broker):
    rc, out = run_site(tmp_path, all_vars={"celery_broker": broker})
    assert_stopped_in_preflight(rc, out, "value of celery_broker must be one of: redis, rabbitmq, got: %s" % broker)


# An int that is not positive (or a bool) passes the spec and is stopped by the worker checks;
# a value that is not an int at all is stopped by the spec.
@pytest.mark.parametrize("value, words", [
    (0, ["Worker settings on bad-input-worker1", "celery_worker_concurrency is 0;"]),
    (-1, ["Worker settings on bad-input-worker1", "celery_worker_concurrency is -1;"]),
    ("ten", [spec_type_error("celery_worker_concurrency", "str", "int")]),
    ("2.5", [spec_type_error("celery_worker_concurrency", "str", "int")]),
    (True, ["Worker settings on bad-input-worker1", "celery_worker_concurrency is True;"]),
])
def test_concurrency_not_a_positive_integer(tmp_path, value, words):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_concurrency": value}})
    assert_stopped_in_preflight(rc, out, *words)


def test_node_concurrency_not_a_positive_integer(tmp_path):
    nodes = [{"name": "worker1", "concurrency": "ten"}]
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_nodes": nodes}})
    assert_stopped_in_preflight(rc, out, "Worker settings on bad-input-worker1",
                                "celery_worker_nodes, node 'worker1': concurrency is 'ten'")


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


@pytest.mark.parametrize("name", ["worker 1", "w;reboot", "$(id)", "w`id`", "images-1"])
def test_node_name_with_shell_characters(tmp_path, name):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_nodes": [name]}})
    assert_stopped_in_preflight(rc, out, "Worker settings on bad-input-worker1",
                                "the node name '%s'" % name)


@pytest.mark.parametrize("queues, words", [
    (["a,b"], ["celery_worker_queues: queue name 'a,b'"]),
    (['q"x'], ["celery_worker_queues: queue name 'q\"x'"]),
    (["it's"], ["celery_worker_queues: queue name \"it's\""]),
    ("celery", ["celery_worker_queues is 'celery'"]),
    ({"celery": 1}, [spec_type_error("celery_worker_queues", "dict", "list")]),
])
def test_bad_queue_names(tmp_path, queues, words):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_queues": queues}})
    assert_stopped_in_preflight(rc, out, *words)


RABBITMQ = {"celery_broker": "rabbitmq",
            "vault_rabbitmq_broker_password": "not-a-real-password-456",
            "rabbitmq_broker_password": "{{ vault_rabbitmq_broker_password }}"}


@passes_preflight
def test_good_rabbitmq_inventory_passes_preflight(tmp_path):
    rc, out = run_site(tmp_path, all_vars=RABBITMQ)
    assert PAST_PREFLIGHT in out, out


def test_rabbitmq_without_password(tmp_path):
    rc, out = run_site(tmp_path, all_vars=dict(RABBITMQ, rabbitmq_broker_password=""))
    assert_stopped_in_preflight(rc, out, "is empty", "set rabbitmq_broker_password")


TWO_BROKERS = {"brokers": ["bad-input-broker", "bad-input-broker2"], "celery_workers": ["bad-input-worker1"],
               "celery_beat": ["bad-input-beat"]}
THREE_RABBITS = dict(TWO_BROKERS, brokers=["bad-input-broker", "bad-input-broker2", "bad-input-broker3"])
COOKIE = {"rabbitmq_broker_erlang_cookie": "x" * 32}
NO_RESULTS = {"celery_result_backend": "none"}


@pytest.mark.parametrize("values, groups, words", [
    (dict(NO_RESULTS, rabbitmq_broker_cluster=True, **COOKIE), TWO_BROKERS,
     ["rabbitmq_broker_cluster is on, but the brokers group has 2 host(s)"]),
    (NO_RESULTS, THREE_RABBITS, ["rabbitmq_broker_erlang_cookie is empty"]),
    (dict(NO_RESULTS, rabbitmq_broker_erlang_cookie="short"), THREE_RABBITS, ["not 20 to 255 letters and digits"]),
    (COOKIE, THREE_RABBITS, ["celery_result_backend is 'broker' (rpc://), but the RabbitMQ brokers form a cluster"]),
    (dict(COOKIE, celery_result_backend="database"), THREE_RABBITS,
     ["celery_result_backend is 'database', but the inventory has no host in the databases group"]),
    (dict(COOKIE, celery_result_backend="none", celery_app_extra_settings={"task_queue_max_priority": 10}),
     THREE_RABBITS, ["whose queues are quorum queues: celery_app_extra_settings asks for queue priorities"]),
    (dict(NO_RESULTS, rabbitmq_broker_tls=True, **COOKIE), THREE_RABBITS,
     ["rabbitmq_broker_tls is on for bad-input-broker, but rabbitmq_broker_tls_cert and rabbitmq_broker_tls_key and "
      "rabbitmq_broker_tls_ca is empty"]),
], ids=["two-nodes", "no-cookie", "short-cookie", "rpc-results", "database-without-host", "priorities", "tls-without-certificates"])
def test_rabbitmq_cluster_settings_that_cannot_work(tmp_path, values, groups, words):
    rc, out = run_site(tmp_path, all_vars=dict(RABBITMQ, **values), groups=groups)
    assert_stopped_in_preflight(rc, out, *words)


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


@pytest.mark.parametrize("name", ["celery_app_result_backend_max_retries", "celery_app_redis_unacked_retry"])
def test_negative_retries(tmp_path, name):
    rc, out = run_site(tmp_path, all_vars={name: -1})
    assert_stopped_in_preflight(rc, out, "%s is '-1'" % name)


@pytest.mark.parametrize("value, words", [
    (0, ["celery_worker_time_limit is 0;"]),
    ("none", [spec_type_error("celery_worker_time_limit", "str", "int")]),
    (None, [spec_type_error("celery_worker_time_limit", "NoneType", "int")]),
])
def test_time_limit_missing(tmp_path, value, words):
    rc, out = run_site(tmp_path, host_vars={"bad-input-worker1": {"celery_worker_time_limit": value}})
    assert_stopped_in_preflight(rc, out, *words)


FLOWER_GROUPS = {"brokers": ["bad-input-broker"], "celery_workers": ["bad-input-worker1"],
                 "celery_beat": ["bad-input-beat"], "flower": ["bad-input-flower"]}
FLOWER = {"vault_celery_flower_password": "not-a-real-password-789",
          "celery_flower_password": "{{ vault_celery_flower_password }}"}


@passes_preflight
def test_good_flower_inventory_passes_preflight(tmp_path):
    rc, out = run_site(tmp_path, all_vars=FLOWER, groups=FLOWER_GROUPS)
    assert PAST_PREFLIGHT in out, out


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
    assert_stopped_in_preflight(rc, out, "On bad-input-broker, redis_broker_port and celery_flower_port are all "
                                "port 6379", "Give one of them another port")


@pytest.mark.parametrize("broker, groups, host_vars, words", [
    ("redis", {"databases": ["bad-input-broker"]}, {"redis_broker_port": 5432},
     "redis_broker_port and PostgreSQL (5432) are all port 5432"),
    ("rabbitmq", {}, {"rabbitmq_broker_management": True, "rabbitmq_broker_management_port": 5672},
     "rabbitmq_broker_port and rabbitmq_broker_management_port are all port 5672"),
    ("rabbitmq", {}, {"rabbitmq_broker_port": 4369}, "rabbitmq_broker_port and RabbitMQ's epmd"),
], ids=["postgresql", "management", "epmd"])
def test_two_tiers_on_one_port_of_a_host(tmp_path, broker, groups, host_vars, words):
    all_vars = dict(FLOWER, celery_broker=broker, rabbitmq_broker_password="secret-rabbit-1")
    rc, out = run_site(tmp_path, all_vars=all_vars, groups=dict(FLOWER_GROUPS, **groups),
                       host_vars={"bad-input-broker": host_vars})
    assert_stopped_in_preflight(rc, out, words)


# The monitoring tier on Flower's host, as molecule/default has it.
MONITORING_GROUPS = dict(FLOWER_GROUPS, monitoring=["bad-input-flower"])
MONITORING = dict(FLOWER, vault_monitoring_password="not-a-real-monitoring-pass-456",
                  monitoring_password="{{ vault_monitoring_password }}")


@passes_preflight
def test_good_monitoring_inventory_passes_preflight(tmp_path):
    rc, out = run_site(tmp_path, all_vars=MONITORING, groups=MONITORING_GROUPS)
    assert PAST_PREFLIGHT in out, out


@pytest.mark.parametrize("all_vars, host_vars, words", [
    # A port that another tier of the same host has.
    ({}, {"bad-input-flower": {"monitoring_prometheus_port": 5555}},
     ["On bad-input-flower, celery_flower_port and monitoring_prometheus_port are all port 5555"]),
    ({}, {"bad-input-broker": {"monitoring_node_exporter_port": 6379}},
     ["On bad-input-broker, redis_broker_port and monitoring_node_exporter_port are all port 6379"]),
    ({}, {"bad-input-flower": {"monitoring_alertmanager_port": 9090}},
     ["monitoring_prometheus_port and monitoring_alertmanager_port are all port 9090"]),
    # Thresholds that are not numbers, or ratios that are not fractions.
    ({"monitoring_alert_failure_ratio": "ten percent"}, {},
     ["monitoring_alert_failure_ratio is 'ten percent': give a number of 0 or more"]),
    ({"monitoring_alert_worker_down_for": "1m"}, {},
     ["monitoring_alert_worker_down_for is '1m': give a number of 0 or more, such as 300 or 0.1 (no unit)"]),
    ({"monitoring_alert_queue_min_length": True}, {}, ["monitoring_alert_queue_min_length is True"]),
    ({"monitoring_alert_failure_ratio": 10}, {},
     ["monitoring_alert_failure_ratio (10) and monitoring_alert_redis_memory_ratio (0.9) are fractions"]),
    ({"monitoring_retention": "two weeks"}, {}, ["monitoring_retention ('two weeks') a Prometheus duration"]),
    ({"monitoring_alertmanager_receivers": [{"webhook_configs": []}]}, {},
     ["monitoring_alertmanager_receivers is Alertmanager's list of receivers, each a mapping with a name"]),
    ({"celery_app_beat_heartbeat_queue": "celery;rm"}, {}, ["celery_app_beat_heartbeat_queue ('celery;rm') a queue name"]),
    # No password, or a placeholder.
    ({"monitoring_password": ""}, {}, ["monitoring_password is empty on bad-input-flower"]),
    ({"monitoring_password": "change-me"}, {}, ["monitoring_password is not of its form"]),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_monitoring_settings(tmp_path, all_vars, host_vars, words):
    rc, out = run_site(tmp_path, all_vars=dict(MONITORING, **all_vars), host_vars=host_vars,
                       groups=MONITORING_GROUPS)
    assert_stopped_in_preflight(rc, out, *words)


# The daemonization surface (issue 4): every bad value names its variable.
W1 = "bad-input-worker1"


@pytest.mark.parametrize("host_vars, words", [
    ({"celery_worker_pool": "forkserver"},
     ["value of celery_worker_pool must be one of: prefork, threads, solo, eventlet, gevent, got: forkserver"]),
    ({"celery_worker_nodes": [{"name": "w1", "pool": "greenlets"}]},
     ["celery_worker_nodes, node 'w1': pool is 'greenlets'"]),
    ({"celery_worker_autoscale": "2,10"}, ["celery_worker_autoscale", "max 2 is below min 10"]),
    ({"celery_worker_node_opts": {"1": {"autoscale": [3, 5]}}},
     ["celery_worker_nodes, node 'worker1': autoscale", "max 3 is below min 5"]),
    ({"celery_worker_nodes": 0}, ["celery_worker_nodes: a count must be 1 to 64"]),
    ({"celery_worker_nodes": 3, "celery_worker_node_opts": {"2-5": {"concurrency": 4}}},
     ["celery_worker_node_opts['2-5']: range 2-5 is outside nodes 1-3"]),
    ({"celery_worker_node_opts": {"images": {"concurrency": 4}}},
     ["celery_worker_node_opts['images']: 'images' is neither a node name"]),
    ({"celery_worker_nodes": [{"name": "w1", "queues": ["a b"]}]},
     ["celery_worker_nodes, node 'w1': queue name 'a b'"]),
    ({"celery_worker_nodes": ["w1@%x"]}, ["the host part '%x'"]),
    ({"celery_worker_soft_time_limit": 300}, ["celery_worker_soft_time_limit", "must be below time_limit 300"]),
    ({"celery_worker_loglevel": "verbose"}, spec_choice_error("celery_worker_loglevel", "verbose")),
    ({"celery_worker_extra_opts": "-O fair; rm -rf /"}, ["celery_worker_extra_opts", "no quotes, $, ;"]),
    ({"celery_worker_nodes": ["w1", "w1"]}, ["node 'w1' appears twice"]),
    ({"celery_worker_nodes": [{"name": "w1", "concurency": 4}]}, ["unknown setting 'concurency'"]),
    ({"celery_worker_stop_timeout": 200}, ["celery_worker_stop_timeout on bad-input-worker1 is 200"]),
    ({"celery_worker_pid_file": "/run/celery/worker.pid"}, ["celery_worker_pid_file"]),
    ({"celery_worker_watchdog_interval": 20},
     ["celery_worker_watchdog_interval on bad-input-worker1 is 20 s", "can take celery_worker_watchdog_timeout + 15 s (25 s)"]),
    ({"celery_worker_watchdog_failures": 0}, ["celery_worker_watchdog_failures must be at least 1"]),
    ({"celery_worker_watchdog_timeout": "ten"}, ["celery_worker_watchdog_timeout"]),
    ({"celery_init_system": "upstart"}, ["celery_init_system on bad-input-worker1 is 'upstart'"]),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_worker_settings(tmp_path, host_vars, words):
    rc, out = run_site(tmp_path, host_vars={W1: host_vars})
    assert_stopped_in_preflight(rc, out, *words)


@pytest.mark.parametrize("entry, words", [
    ({"name": "r", "task": "proj.tasks.add", "crontab": {"minute": 60}},
     ["celery_app_beat_schedule[r].crontab.minute is 60", "allowed: 0-59"]),
    ({"name": "r", "task": "proj.tasks.add", "crontab": {"hour": "9-25"}},
     ["celery_app_beat_schedule[r].crontab.hour is '9-25'"]),
    ({"name": "r", "task": "proj.tasks.add", "crontab": {"day_of_week": "funday"}},
     ["celery_app_beat_schedule[r].crontab.day_of_week"]),
    ({"name": "r", "task": "proj.tasks.add", "crontab": {"month_of_year": 13}},
     ["celery_app_beat_schedule[r].crontab.month_of_year is 13"]),
    ({"name": "r", "task": "proj.tasks.add", "crontab": {"minutes": 5}},
     ["celery_app_beat_schedule[r].crontab.minutes is not a crontab field"]),
    ({"name": "s", "task": "proj.tasks.add", "solar": {"event": "moonrise", "latitude": 1, "longitude": 2}},
     ["celery_app_beat_schedule[s].solar.event is 'moonrise'", "sunset"]),
    ({"name": "s", "task": "proj.tasks.add", "solar": {"event": "sunset", "latitude": 91, "longitude": 0}},
     ["celery_app_beat_schedule[s].solar.latitude is 91"]),
    ({"name": "e", "task": "proj.tasks.add", "every": 10, "crontab": {"minute": 1}},
     ["celery_app_beat_schedule[e]: give exactly one of every"]),
    ({"name": "e", "task": "proj.tasks.add", "every": 0}, ["celery_app_beat_schedule[e].every is 0"]),
])
def test_bad_beat_schedule(tmp_path, entry, words):
    rc, out = run_site(tmp_path, all_vars={"celery_app_beat_schedule": [entry]})
    assert_stopped_in_preflight(rc, out, *words)


@pytest.mark.parametrize("beat_vars, words", [
    ({"celery_beat_scheduler": "x; reboot"}, ["celery_beat_scheduler is 'x; reboot'"]),
    ({"celery_beat_extra_opts": "$(reboot)"}, ["celery_beat_extra_opts"]),
])
def test_bad_beat_settings(tmp_path, beat_vars, words):
    rc, out = run_site(tmp_path, host_vars={"bad-input-beat": beat_vars})
    assert_stopped_in_preflight(rc, out, *words)


# Wrong types and values outside a closed set, caught by the roles' argument specs. Each case:
# the inventory it starts from, the host whose host_vars get the values (None: group_vars/all),
# the values, and what the message must say.
BASES = {
    "redis": ({}, None),
    "rabbitmq": (RABBITMQ, None),
    "flower": (FLOWER, FLOWER_GROUPS),
}
BROKER = "bad-input-broker"
BEAT = "bad-input-beat"
FLOWER_HOST = "bad-input-flower"


@pytest.mark.parametrize("base, host, values, words", [
    # A dict where a list is expected, and the other way round.
    ("redis", None, {"celery_app_requirements": {"celery": "5.6.0"}},
     [spec_type_error("celery_app_requirements", "dict", "list")]),
    ("redis", None, {"celery_app_beat_schedule": {"name": "r", "task": "proj.tasks.add", "every": 5}},
     [spec_type_error("celery_app_beat_schedule", "dict", "list")]),
    ("redis", BROKER, {"redis_broker_save": {"3600": 1}}, [spec_type_error("redis_broker_save", "dict", "list")]),
    ("redis", None, {"celery_app_task_routes": ["proj.tasks.urgent"]},
     [spec_type_error("celery_app_task_routes", "list", "dict")]),
    ("redis", None, {"celery_unit_ip_allow": {"10.0.0.5": True}}, [spec_type_error("celery_unit_ip_allow", "dict", "list")]),
    ("redis", W1, {"celery_worker_node_opts": ["1-3"]}, [spec_type_error("celery_worker_node_opts", "list", "dict")]),
    # A string for a bool.
    ("redis", None, {"celery_app_task_acks_late": "sometimes"},
     [spec_type_error("celery_app_task_acks_late", "str", "bool")]),
    ("redis", BROKER, {"redis_broker_appendonly": "perhaps"}, [spec_type_error("redis_broker_appendonly", "str", "bool")]),
    ("redis", W1, {"celery_worker_remove_logs": "sure"}, [spec_type_error("celery_worker_remove_logs", "str", "bool")]),
    ("rabbitmq", None, {"rabbitmq_broker_management": "enabled"},
     [spec_type_error("rabbitmq_broker_management", "str", "bool")]),
    ("redis", None, {"celery_unit_hardening": "maybe"}, [spec_type_error("celery_unit_hardening", "str", "bool")]),
    # A bad value that arrives through a template (as a vault_ variable would) is caught too.
    ("redis", None, {"vault_acks_late": "maybe", "celery_app_task_acks_late": "{{ vault_acks_late }}"},
     [spec_type_error("celery_app_task_acks_late", "str", "bool")]),
    # Words for numbers.
    ("redis", None, {"celery_app_visibility_timeout": "1h"}, [spec_type_error("celery_app_visibility_timeout", "str", "int")]),
    ("redis", None, {"celery_logrotate_rotate": "two weeks"}, [spec_type_error("celery_logrotate_rotate", "str", "int")]),
    # celery_broker_port takes its value from redis_broker_port and is checked first, on every host;
    # the message shows its description, which names redis_broker_port.
    ("redis", BROKER, {"redis_broker_port": "six thousand"},
     [spec_type_error("celery_broker_port", "str", "int"), "redis_broker_port"]),
    ("rabbitmq", BROKER, {"rabbitmq_broker_management_port": "web"},
     [spec_type_error("rabbitmq_broker_management_port", "str", "int")]),
    ("redis", W1, {"celery_worker_max_tasks_per_child": "many"},
     [spec_type_error("celery_worker_max_tasks_per_child", "str", "int")]),
    ("rabbitmq", None, {"rabbitmq_broker_consumer_timeout": "30m"},
     [spec_type_error("rabbitmq_broker_consumer_timeout", "str", "int")]),
    ("rabbitmq", None, {"rabbitmq_broker_vm_memory_high_watermark": "most"},
     [spec_type_error("rabbitmq_broker_vm_memory_high_watermark", "str", "float")]),
    ("flower", FLOWER_HOST, {"celery_flower_port": "http"}, [spec_type_error("celery_flower_port", "str", "int")]),
    # Beat schedule entries: a known key of the wrong type, and a misspelt key.
    ("redis", None, {"celery_app_beat_schedule": [{"name": "r", "task": "proj.tasks.add", "every": "ten"}]},
     ["argument 'every' is of type str found in 'celery_app_beat_schedule'"]),
    ("redis", None, {"celery_app_beat_schedule": [{"name": "r", "taks": "proj.tasks.add", "every": 5}]},
     ["celery_app_beat_schedule.taks", "missing required arguments: task found in celery_app_beat_schedule"]),
    # Values outside a closed set.
    ("redis", None, {"celery_logrotate_frequency": "fortnightly"},
     spec_choice_error("celery_logrotate_frequency", "fortnightly")),
    ("redis", BROKER, {"redis_broker_appendfsync": "sometimes"}, spec_choice_error("redis_broker_appendfsync", "sometimes")),
    ("redis", BROKER, {"redis_broker_loglevel": "loud"}, spec_choice_error("redis_broker_loglevel", "loud")),
    ("redis", BROKER, {"redis_broker_maxmemory_policy": "allkeys-lru"},
     spec_choice_error("redis_broker_maxmemory_policy", "allkeys-lru")),
    ("redis", W1, {"celery_worker_optimization": "fast"}, spec_choice_error("celery_worker_optimization", "fast")),
    ("redis", BEAT, {"celery_beat_loglevel": "chatty"}, spec_choice_error("celery_beat_loglevel", "chatty")),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_types_and_choices(tmp_path, base, host, values, words):
    base_vars, groups = BASES[base]
    if host is None:
        rc, out = run_site(tmp_path, all_vars=dict(base_vars, **values), groups=groups)
    else:
        rc, out = run_site(tmp_path, all_vars=base_vars, host_vars={host: values}, groups=groups)
    assert_stopped_in_preflight(rc, out, "Validation of arguments failed", *words)


@passes_preflight
def test_templated_values_pass_preflight(tmp_path):
    """The specs check the templated values: numbers and bools that come from vault_ variables
    or expressions as strings pass, like the literal ones."""
    all_vars = dict(FLOWER, vault_acks_late="true", celery_app_task_acks_late="{{ vault_acks_late }}",
                    celery_app_visibility_timeout="{{ 3600 * 2 }}", redis_broker_port="{{ '6380' }}",
                    celery_logrotate_rotate="{{ '7' }}")
    host_vars = {W1: {"vault_concurrency": "4", "celery_worker_concurrency": "{{ vault_concurrency }}",
                      "celery_worker_queues": "{{ ['celery', 'hipri'] }}", "celery_worker_optimization": "fair"},
                 FLOWER_HOST: {"celery_flower_port": "{{ '5556' }}"}}
    rc, out = run_site(tmp_path, all_vars=all_vars, host_vars=host_vars, groups=FLOWER_GROUPS)
    assert PAST_PREFLIGHT in out, out


# Values Redis itself would refuse as it starts: the controller names them first.
@pytest.mark.parametrize("values, words", [
    ({"redis_broker_maxmemory": "2 gigs"}, ["redis_broker_maxmemory is '2 gigs'", "512mb"]),
    ({"redis_broker_save": ["900"]}, ["redis_broker_save is ['900']", '"seconds changes"']),
    ({"redis_broker_save": ["900 1", "0 1"]}, ["redis_broker_save is ['900 1', '0 1']", "seconds from 1"]),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_redis_values(tmp_path, values, words):
    rc, out = run_site(tmp_path, host_vars={BROKER: values})
    assert_stopped_in_preflight(rc, out, *words)


# Redis's users (ACL): names Redis would split into rules, missing or shared passwords, and
# Redis URLs that log in as the default user, which the kit's Redis does not have.
@pytest.mark.parametrize("values, words", [
    ({"redis_broker_user": "celery app"}, ["redis_broker_user ('celery app')", "Redis reads a space"]),
    ({"redis_broker_kit_user": ">secret"}, ["redis_broker_kit_user ('>secret')", "four different names"]),
    ({"redis_broker_exporter_user": "~keys"}, ["redis_broker_exporter_user ('~keys')"]),
    ({"redis_broker_kit_user": "celery"}, ["must be four different names"]),
    ({"redis_broker_user": "default"}, ["none of them 'default'"]),
    ({"redis_broker_kit_password": ""}, ["redis_broker_kit_password is empty or the app's password"]),
    ({"redis_broker_kit_password": "{{ vault_redis_broker_password }}"},
     ["redis_broker_kit_password is empty or the app's password"]),
    ({"redis_broker_password_previous": "old pass"}, ["redis_broker_password_previous: a password holds a space"]),
    ({"redis_broker_user_keys": "reports"}, ["redis_broker_user_keys is reports: give a list of key patterns"]),
    ({"redis_broker_user_keys": ["reports", "a b"]}, ["redis_broker_user_keys is ['reports', 'a b']"]),
    ({"celery_result_backend": "redis://:not-a-real-password-123@10.0.0.9:6379/1"},
     ["A Redis URL of redis://:********@10.0.0.9:6379/1 has a password but no user name", "redis://celery:PASSWORD@"]),
    ({"celery_broker_url": "amqp://celery:pw@10.0.0.9:5672/celery"},
     ["celery_broker_url does not start with redis://, rediss:// or sentinel://, but celery_broker is redis"]),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else None)
def test_bad_redis_users(tmp_path, values, words):
    rc, out = run_site(tmp_path, all_vars=values)
    assert_stopped_in_preflight(rc, out, *words)
    assert "not-a-real-password-123" not in out


PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUFakeFakeFake\n-----END CERTIFICATE-----\n"


@pytest.mark.parametrize("values, words", [
    ({"redis_broker_tls": True}, ["redis_broker_tls is on for bad-input-broker, but redis_broker_tls_cert and "
                                  "redis_broker_tls_key and redis_broker_tls_ca is empty"]),
    # The class of mistake: a path, or a file cut short, where PEM text belongs.
    ({"redis_broker_tls": True, "redis_broker_tls_cert": PEM_CERT, "redis_broker_tls_key": "secret-key",
      "redis_broker_tls_ca": PEM_CERT},
     ["redis_broker_tls_key is not of its form: give PEM text of a private key"]),
    # The CA cut short, which the clients' celery_broker_tls_ca follows: every host stops.
    ({"redis_broker_tls": True, "redis_broker_tls_cert": PEM_CERT, "redis_broker_tls_key": "secret-key",
      "redis_broker_tls_ca": PEM_CERT[:40]},
     ["celery_broker_tls_ca is ''-----BEGIN CERTIFICATE-----", "give PEM text", "fatal: [bad-input-worker1]"]),
    ({"redis_broker_tls": True, "redis_broker_tls_cert": "/etc/ssl/certs/broker1.pem", "redis_broker_tls_ca": PEM_CERT},
     ["redis_broker_tls_cert is '/etc/ssl/certs/broker1.pem': give PEM text", "tls/broker1.crt"]),
    ({"redis_broker_tls": "sometimes"}, ["redis_broker_tls"]),
], ids=["no-certificates", "key-not-pem", "ca-cut-short", "a-path", "not-a-bool"])
def test_redis_tls_without_its_certificates(tmp_path, values, words):
    rc, out = run_site(tmp_path, all_vars=values)
    assert_stopped_in_preflight(rc, out, *words)
    assert "secret-key" not in out


SENTINEL = {"redis_broker_sentinel": True, "redis_broker_replication_password": "replication-Pass-0123"}
THREE_BROKERS = {"brokers": ["bad-input-broker", "bad-input-broker2", "bad-input-broker3"],
                 "celery_workers": ["bad-input-worker1"], "celery_beat": ["bad-input-beat"]}


@pytest.mark.parametrize("values, groups, words", [
    ({}, None, ["redis_broker_sentinel is on, but the brokers group has 1 host(s)", "three or more"]),
    ({"redis_broker_sentinel_quorum": 1}, THREE_BROKERS, ["a majority of the 3 brokers, from 2 to 3"]),
    ({"redis_broker_min_replicas_to_write": 3}, THREE_BROKERS, ["redis_broker_min_replicas_to_write (3) from 0 to 2"]),
    ({"redis_broker_replication_password": ""}, THREE_BROKERS, ["redis_broker_replication_password is empty"]),
    ({"redis_broker_replication_user": "celery"}, THREE_BROKERS, ["must be four different names"]),
    ({"celery_app_redis_unacked_retry": 30}, THREE_BROKERS, ["cannot follow a failover"]),
    ({"celery_broker_url": "redis://celery:pass@10.0.0.1:6379/0"}, THREE_BROKERS,
     ["celery_broker_url does not start with sentinel://"]),
], ids=["one-host", "quorum-not-a-majority", "more-replicas-than-hosts", "no-replication-password",
        "replication-user-is-the-app-user", "kit-transport", "url-not-sentinel"])
def test_redis_sentinel_settings_that_cannot_work(tmp_path, values, groups, words):
    rc, out = run_site(tmp_path, all_vars=dict(SENTINEL, **values), groups=groups)
    assert_stopped_in_preflight(rc, out, *words)


def test_redis_sentinel_set_for_the_brokers_only(tmp_path):
    """Clients would not know to ask the sentinels: redis_broker_sentinel belongs in group_vars/all."""
    rc, out = run_site(tmp_path, groups=THREE_BROKERS, all_vars={"redis_broker_replication_password": "replication-Pass-0123"},
                       host_vars={h: {"redis_broker_sentinel": True} for h in THREE_BROKERS["brokers"]})
    assert_stopped_in_preflight(rc, out, "but not for the Celery hosts: set it in group_vars/all")


def test_the_exporter_user_needs_a_password_with_a_monitoring_host(tmp_path):
    rc, out = run_site(tmp_path, all_vars=dict(MONITORING, redis_broker_exporter_password=""), groups=MONITORING_GROUPS)
    assert_stopped_in_preflight(rc, out, "redis_broker_exporter_password is empty or another user's")


# --- the app's source, its environment and its settings (celery_app) -------------------------

# Each kind of source once: every other case of the filter is tested in-process
# (tests/unit/test_celery_app_filters.py).
@pytest.mark.parametrize("source, words", [
    ({"git": "https://git.example.com/app.git"}, "celery_app_source.git (https://git.example.com/app.git) has no version"),
    ({"dist": "/nonexistent/myapp-1.0-py3-none-any.whl"}, "which is not a file on the controller"),
    ({"requirement": "myapp"}, "give one pinned requirement such as myapp==1.4.2"),
    ({"svn": "https://svn.example.com/app"}, "celery_app_source must be a folder on the controller, or a mapping"),
], ids=["git-no-version", "dist-missing", "requirement-unpinned", "unknown-kind"])
def test_bad_app_source(tmp_path, source, words):
    rc, out = run_site(tmp_path, all_vars={"celery_app_source": source})
    assert_stopped_in_preflight(rc, out, "celery_app_source", words)


def test_django_settings_without_django(tmp_path):
    """DJANGO_SETTINGS_MODULE means nothing to an app without Django: the sample app's folder has
    no requirements.txt, and celery_app_requirements names no Django."""
    rc, out = run_site(tmp_path, all_vars={"celery_app_django_settings": "mysite.settings"})
    assert_stopped_in_preflight(rc, out, "celery_app_django_settings is 'mysite.settings', but neither")


@pytest.mark.parametrize("module", ["proj.celery", "proj.celery:app"])
@passes_preflight
def test_every_form_of_celery_app_passes_preflight(tmp_path, module):
    rc, out = run_site(tmp_path, all_vars={"celery_app_module": module})
    assert PAST_PREFLIGHT in out, out


@pytest.mark.parametrize("module", ["proj:", "proj.celery:app:x", "proj celery", "proj/celery"])
def test_bad_forms_of_celery_app(tmp_path, module):
    rc, out = run_site(tmp_path, all_vars={"celery_app_module": module})
    assert_stopped_in_preflight(rc, out, "celery_app_module is '%s'" % module)


# Besides tests/test_quoting.py's (spaces and shell in names, newlines, whitespace, the kit's names).
@pytest.mark.parametrize("environment, words", [
    ({"1KEY": "x"}, "the name '1KEY' is not a shell variable name"),
    ({"API_KEY": {"nested": 1}}, "celery_app_environment.API_KEY must be a string or a number"),
], ids=["digit-first", "mapping"])
def test_bad_app_environment(tmp_path, environment, words):
    """Values come from vault in real use; none is echoed back in the message."""
    rc, out = run_site(tmp_path, all_vars={"celery_app_environment": environment})
    assert_stopped_in_preflight(rc, out, words)
    assert "s3cret" not in out.replace("s3cret\\n", "")



# --- Every value checked for its form (kit_checks forms and one line each) ---------------------

@pytest.mark.parametrize("all_vars, words", [
    ({"celery_group": "shadow"}, "celery_group is 'shadow': give a group of its own"),
    ({"celery_user": "www-data"}, "celery_user is 'www-data': give a name of its own"),
    ({"celery_app_timezone": "Europe/Pariss"}, "celery_app_timezone is 'Europe/Pariss': give an IANA time zone name"),
    ({"celery_log_dir": "/var/log/celery\nExecStartPre=/bin/touch /tmp/pwned"},
     "celery_log_dir holds a newline or another control character"),
    ({"celery_state_dir": "/var/lib/../celery"}, "celery_state_dir is '/var/lib/../celery': give an absolute path"),
    ({"celery_broker_host": "broker host"}, "celery_broker_host is 'broker host': give an IPv4 or IPv6 address"),
    ({"celery_broker_port": 70000}, "celery_broker_port is 70000: give a TCP port from 1 to 65535"),
    ({"vault_redis_broker_password": "not-a-real-password-123\n"}, "redis_broker_password holds a newline"),
    ({"vault_redis_broker_password": "change-me-to-a-long-random-string"},
     "redis_broker_password is not of its form: give a secret"),
    ({"celery_worker_queues": ["celery", "hipri\n"]}, "celery_worker_queues holds a newline"),
], ids=["group-shadow", "user-www-data", "timezone", "path-newline-unit", "path-dotdot", "address-space", "port-range",
        "secret-trailing-newline", "secret-placeholder", "queue-newline"])
def test_values_not_of_their_form(tmp_path, all_vars, words):
    rc, out = run_site(tmp_path, all_vars=all_vars)
    assert_stopped_in_preflight(rc, out, words)
    assert "not-a-real-password-123" not in out and "change-me-to-a" not in out


@pytest.mark.parametrize("port", [80, 1023])
def test_flower_cannot_bind_a_privileged_port(tmp_path, port):
    rc, out = run_site(tmp_path, host_vars={FLOWER_HOST: {"celery_flower_port": port}}, groups=FLOWER_GROUPS)
    assert_stopped_in_preflight(rc, out, "celery_flower_port is %d: give a TCP port from 1024 to 65535" % port)
