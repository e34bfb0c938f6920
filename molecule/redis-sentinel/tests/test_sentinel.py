"""Redis Sentinel, with ACL users and TLS: one master, two replicas, a sentinel on each broker.
Tasks run through the sentinels; the master's container is killed under load and a replica
takes over; playbooks/restart-brokers.yml restarts the group under load; the shared Redis checks
run on each broker (ACL LOG, NOPERM, TLS)."""

import json
import os
import shlex
import subprocess
import time

import pytest

from conftest import host_of, hosts_in, inventory_vars, playbook, run_client
from load import WORKERS, Load, clear_records, explained, longest_stop, restart_brokers_under_load
from test_redis import *  # noqa: F401,F403  the shared Redis checks, on each broker

BROKERS = hosts_in("brokers")
MASTER_NAME = "celery-kit"
CA = "/etc/redis-tls/ca.crt"


def address(name):
    return host_of(name).ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


ADDRESSES = {name: address(name) for name in BROKERS}


def kit_cli(name, args):
    return host_of(name).run("celery-kit-redis-cli %s" % args)


def running(name):
    out = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", name], capture_output=True, text=True)
    return out.stdout.strip() == "true"


def roles():
    """Each running broker's ROLE: ['master', ...] or ['slave', master address, port, state, offset]."""
    return {name: kit_cli(name, "ROLE").stdout.split() for name in BROKERS if running(name)}


def sentinel_master(name):
    """What the sentinel of `name` says of the master: a dict of SENTINEL MASTER's fields."""
    lines = kit_cli(name, "--sentinel SENTINEL MASTER %s" % MASTER_NAME).stdout.splitlines()
    return dict(zip(lines[::2], lines[1::2]))


def healthy(expected=3):
    """The group when one master has expected - 1 connected replicas and every running sentinel
    knows them and the other sentinels: the master's name, or None."""
    seen = roles()
    masters = [name for name, role in seen.items() if role[:1] == ["master"]]
    if len(seen) != expected or len(masters) != 1:
        return None
    replicas = [role for role in seen.values() if role[:1] == ["slave"]]
    if len(replicas) != expected - 1 or any(r[1] != ADDRESSES[masters[0]] or r[3] != "connected" for r in replicas):
        return None
    for name in seen:
        said = sentinel_master(name)
        if (said.get("ip") != ADDRESSES[masters[0]] or said.get("num-slaves") != str(expected - 1)
                or said.get("num-other-sentinels") != str(expected - 1) or said.get("flags") != "master"):
            return None
    return masters[0]


def wait_healthy(expected=3, deadline=120):
    until = time.time() + deadline
    while time.time() < until:
        master = healthy(expected)
        if master:
            return master
        time.sleep(1)
    pytest.fail("the Sentinel group is not whole after %d s: roles %s; sentinels %s" % (
        deadline, roles(), {n: sentinel_master(n) for n in BROKERS if running(n)}))


def test_one_master_two_replicas_and_a_sentinel_on_each_broker():
    master = wait_healthy()
    assert sentinel_master(master)["quorum"] == "2"


def test_tasks_run_through_the_sentinels():
    """The cluster's URLs name every sentinel; a task sent through them comes back."""
    worker = host_of(WORKERS[0])
    config = worker.file("/opt/celery/kit/celery_kit/config.py").content_string
    assert 'broker_url = "sentinel://celery:' in config
    assert config.count("sentinel://") == 2 * len(BROKERS), config  # the broker's and the results'
    assert run_client(worker, "import json; from proj.tasks import add; print(json.dumps(add.delay(2, 3).get(timeout=30)))") == 5


@pytest.mark.parametrize("name", BROKERS)
def test_sentinels_refused_no_command_of_the_cluster(name):
    """Each sentinel's ACL LOG is empty so far (before the probes below): the app's user may ask
    all that redis-py asks a sentinel, and the sentinels let each other in."""
    log = kit_cli(name, "--sentinel ACL LOG 128").stdout
    assert log.strip() == "", log


@pytest.mark.parametrize("name", BROKERS)
def test_sentinels_speak_tls_only_and_only_to_their_users(name):
    """The sentinel's port takes no plain client and no one without a user; the app's user may
    ask where the master is, not fail it over."""
    host, at = host_of(name), ADDRESSES[name]
    plain = host.run("redis-cli -h %s -p 26379 PING" % at)
    assert "PONG" not in plain.stdout and "NOAUTH" not in plain.stdout, plain.stdout
    nobody = host.run("redis-cli --tls --cacert %s -h %s -p 26379 PING" % (CA, at))
    assert "NOAUTH" in nobody.stdout + nobody.stderr, nobody.stdout
    app = "REDISCLI_AUTH=%s redis-cli --no-auth-warning --tls --cacert %s --user celery -h %s -p 26379 SENTINEL %%s %s" % (
        shlex.quote(inventory_vars(name)["vault_redis_broker_password"]), CA, at, MASTER_NAME)
    assert host.run(app % "GET-MASTER-ADDR-BY-NAME").stdout.split()[0] in ADDRESSES.values()
    assert host.run(app % "FAILOVER").stdout.startswith("NOPERM")


def test_the_master_is_lost_under_load_and_a_replica_takes_over():
    """1,000 tasks in flight, then the master's container is killed: the sentinels promote a
    replica, the worker and beat find it on their own, and every task completes. Prints what was
    lost, failed and ran twice, how long the promotion took and how long tasks stopped flowing;
    then the old master comes back as a replica."""
    master = wait_healthy()
    clear_records()
    load = Load(0, 1000, 0.1)
    time.sleep(5)  # tasks flow
    killed = time.time()
    subprocess.run(["docker", "kill", master], check=True, capture_output=True)
    survivor = [name for name in BROKERS if name != master][0]
    promoted = None
    while time.time() < killed + 90:
        ip = kit_cli(survivor, "--sentinel SENTINEL GET-MASTER-ADDR-BY-NAME %s" % MASTER_NAME).stdout.split()[:1]
        if ip and ip[0] != ADDRESSES[master]:
            promoted = time.time() - killed
            break
        time.sleep(0.5)
    report = load.wait()
    stopped = longest_stop(killed)
    lost = report["never_ran"] + report["ran_without_result"]
    print("master %s killed: replica promoted after %s s; tasks stopped flowing for %s s; of 1000 tasks %d lost, "
          "%d failed, %d ran twice; the client waited %s s"
          % (master, None if promoted is None else round(promoted, 1), stopped, len(lost), len(report["failed"]),
             len(report["twice"]), report["client_seconds"]))
    if os.environ.get("FAILOVER_REPORT"):  # ./kit bench --only i
        with open(os.environ["FAILOVER_REPORT"], "w") as f:
            json.dump({"promoted": promoted, "stopped": stopped, "lost": len(lost), "failed": len(report["failed"]),
                       "twice": len(report["twice"])}, f)
    subprocess.run(["docker", "start", master], check=True, capture_output=True)
    assert promoted is not None, "no replica was promoted within 90 s"
    assert report["ok"], explained(report)
    new_master = wait_healthy(deadline=180)
    assert new_master != master
    # Sentinel's rewrite of redis.conf was refused: the file is still the kit's.
    assert not host_of(new_master).run("grep -c '^replicaof' /etc/redis/redis.conf").stdout.strip().strip("0")


def test_restart_brokers_playbook_restarts_replicas_then_the_master():
    """playbooks/restart-brokers.yml under load (load.py): the replicas restart first, then the
    master hands its role over and restarts; every task completes, once."""
    master = wait_healthy()
    proc = restart_brokers_under_load("with Sentinel")
    assert "Have the sentinels promote a replica" in proc.stdout
    assert wait_healthy() != master


def test_status_shows_the_master_and_the_replicas_lag():
    proc = playbook("playbooks/status.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Redis (Sentinel):" in proc.stdout
    assert proc.stdout.count("replica of ") == 2 and "master, 2 replica(s) connected" in proc.stdout, proc.stdout[-3000:]
