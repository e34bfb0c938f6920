"""The RabbitMQ broker: its own vhost and user, no guest, durable queues, the right limits."""

import json

import pytest

from conftest import (BROKER, IMPORT_APP, host_of, hosts_in, inventory_vars, kill_9_during_a_task, playbook,
                      run_client)

pytestmark = pytest.mark.skipif(BROKER != "rabbitmq", reason="the cluster's broker is %s" % BROKER)

BROKERS = hosts_in("brokers")
WORKERS = hosts_in("celery_workers")
VHOST = "celery"
USER = "celery"


def broker_address():
    host = host_of(BROKERS[0])
    return host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def try_login(user, password, vhost):
    """Open an AMQP connection from a worker host; return 'ok' or the error it raised."""
    code = (
        "import json, kombu\n"
        "c = kombu.Connection(hostname=%r, port=5672, userid=%r, password=%r, virtual_host=%r,"
        " connect_timeout=10)\n"
        "try:\n"
        "    c.connect(); print(json.dumps('ok'))\n"
        "except Exception as exc:\n"
        "    print(json.dumps('%%s: %%s' %% (type(exc).__name__, exc)))\n"
    ) % (broker_address(), user, password, vhost)
    return run_client(host_of(WORKERS[0]), code)


def app_password():
    return inventory_vars(BROKERS[0])["vault_rabbitmq_broker_password"]


@pytest.mark.parametrize("name", BROKERS)
def test_rabbitmq_runs_and_starts_at_boot(name):
    svc = host_of(name).service("rabbitmq-server")
    assert svc.is_running
    assert svc.is_enabled


def open_files(host, pid):
    limits = host.check_output("cat /proc/%s/limits" % pid)
    return int([line.split()[3] for line in limits.splitlines() if line.startswith("Max open files")][0])


@pytest.mark.parametrize("name", BROKERS)
def test_rabbitmq_open_file_limit(name):
    """The unit asks for 65536 open files, and the server gets them, up to the ceiling of the
    machine it runs on (PID 1's hard limit: a container cannot go above its engine's, which is
    20000 where the Docker daemon lacks CAP_SYS_RESOURCE)."""
    host = host_of(name)
    limit = host.check_output("systemctl show -p LimitNOFILE --value rabbitmq-server")
    assert int(limit) >= 65536
    pid = host.check_output("systemctl show -p MainPID --value rabbitmq-server")
    ceiling = int(host.check_output("awk '/Max open files/ {print $5}' /proc/1/limits"))
    assert open_files(host, pid) == min(int(limit), ceiling)


@pytest.mark.parametrize("name", BROKERS)
def test_rabbitmq_listens_on_the_workers_address_only(name):
    host = host_of(name)
    assert host.socket("tcp://%s:5672" % broker_address()).is_listening
    assert not host.socket("tcp://0.0.0.0:5672").is_listening
    assert not host.socket("tcp://:::5672").is_listening
    # The management plugin is off by default.
    assert not host.socket("tcp://0.0.0.0:15672").is_listening
    assert "rabbitmq_management" not in host.check_output("rabbitmq-plugins list -e -m").split()


@pytest.mark.parametrize("name", BROKERS)
def test_erlang_distribution_listens_on_loopback_and_the_node_address_only(name):
    """epmd (4369) and the node's distribution port (25672) listen on loopback and the address
    the node's name resolves to, not on every interface; the CLI still reaches the node; the
    Erlang cookie is RabbitMQ's alone."""
    host = host_of(name)
    node_address = host.check_output("getent ahostsv4 \"$(hostname)\" | awk 'NR == 1 {print $1}'")
    for port, allowed in (("4369", {"127.0.0.1", node_address}), ("25672", {node_address})):
        listening = {line.split()[3].rsplit(":", 1)[0]
                     for line in host.check_output("ss -Hltn 'sport = :%s'" % port).splitlines()}
        assert listening and listening <= allowed, (port, listening, allowed)
    assert host.run("rabbitmqctl -q status").rc == 0
    cookie = host.file("/var/lib/rabbitmq/.erlang.cookie")
    assert (cookie.user, cookie.group, cookie.mode) == ("rabbitmq", "rabbitmq", 0o400)


@pytest.mark.parametrize("name", BROKERS)
def test_rabbitmq_config(name):
    f = host_of(name).file("/etc/rabbitmq/rabbitmq.conf")
    assert (f.user, f.group, f.mode) == ("root", "rabbitmq", 0o640)
    assert "consumer_timeout = 1800000" in f.content_string


@pytest.mark.parametrize("name", BROKERS)
def test_the_rabbitmq_config_test_refuses_what_rabbitmq_refuses(name):
    """The script that checks a new rabbitmq.conf before it is written (rabbitmq_broker's
    files/rabbitmq-config-test) passes the host's own file and fails one with a value RabbitMQ
    cannot take, in RabbitMQ's words, while the running node goes on."""
    host = host_of(name)
    command = "/usr/local/sbin/celery-kit-rabbitmq-config-test /tmp/%s.conf"
    pid = host.check_output("systemctl show -p MainPID --value rabbitmq-server")
    host.run("cp -p /etc/rabbitmq/rabbitmq.conf /tmp/good.conf"
             " && sed 's/^consumer_timeout = .*/consumer_timeout = soon/' /tmp/good.conf > /tmp/bad.conf")
    try:
        good, bad = host.run(command % "good"), host.run(command % "bad")
    finally:
        host.run("rm -f /tmp/good.conf /tmp/bad.conf")
    assert good.rc == 0, good.stderr
    assert bad.rc == 1 and "consumer_timeout" in bad.stderr and "soon" in bad.stderr, (bad.rc, bad.stderr)
    assert host.check_output("systemctl show -p MainPID --value rabbitmq-server") == pid


def test_a_rabbitmq_config_that_does_not_start_leaves_the_old_one_running(tmp_path):
    """An address the broker host does not have passes every check on the controller and the
    config schemas; RabbitMQ cannot listen on it, the previous rabbitmq.conf is put back and
    runs, the run fails saying so, and tasks still go through the broker."""
    host = host_of(BROKERS[0])
    before = host.file("/etc/rabbitmq/rabbitmq.conf").sha256sum
    play = tmp_path / "rabbitmq.yml"
    play.write_text("- hosts: brokers\n  roles: [rabbitmq_broker]\n")
    proc = playbook(str(play), "-e", "rabbitmq_broker_bind_address=10.231.231.99")
    said = " ".join(proc.stdout.split())
    assert proc.returncode != 0
    assert "did not come back on its new config" in said, proc.stdout[-3000:]
    assert "the previous rabbitmq.conf is back and RabbitMQ runs it" in said, proc.stdout[-3000:]
    assert host.file("/etc/rabbitmq/rabbitmq.conf").sha256sum == before
    assert host.run("ls /etc/rabbitmq | grep '~$'").stdout == "", "a copy of the old rabbitmq.conf was left"
    assert host.service("rabbitmq-server").is_running
    code = "import json; %s; print(json.dumps(app.send_task('proj.tasks.add', args=(2, 3)).get(timeout=60)))" % IMPORT_APP
    assert run_client(host_of(WORKERS[0]), code) == 5


@pytest.mark.parametrize("name", BROKERS)
def test_guest_is_gone(name):
    users = host_of(name).check_output("rabbitmqctl list_users -q --formatter json")
    assert '"guest"' not in users
    assert '"%s"' % USER in users


def test_guest_cannot_log_in():
    got = try_login("guest", "guest", "/")
    assert got != "ok"
    assert "access_refused" in got.lower() or "accessrefused" in got.lower(), got


def test_app_user_logs_in_to_its_vhost_only():
    assert try_login(USER, app_password(), VHOST) == "ok"
    refused = try_login(USER, app_password(), "/")
    assert refused != "ok", "the app user reached the default vhost"
    assert try_login(USER, "wrong-" + app_password(), VHOST) != "ok"


@pytest.mark.parametrize("name", BROKERS)
def test_app_user_has_permissions_on_its_vhost_only(name):
    perms = json.loads(host_of(name).check_output(
        "rabbitmqctl list_user_permissions -q --formatter json %s" % USER))
    assert [p["vhost"] for p in perms] == [VHOST]


@pytest.mark.parametrize("name", BROKERS)
def test_app_queues_are_durable(name):
    queues = json.loads(host_of(name).check_output(
        "rabbitmqctl list_queues -q --formatter json -p %s name durable" % VHOST))
    durable = {q["name"]: q["durable"] for q in queues}
    for queue in ("celery", "hipri"):
        assert durable.get(queue) is True, durable


def test_no_worker_still_uses_redis():
    """After the switch from Redis (the scenario's prepare step), no celery process keeps a
    connection to Redis: every worker and beat restarted with the amqp:// URL."""
    for name in WORKERS + hosts_in("celery_beat"):
        out = host_of(name).run("ss -tnpH state established '( dport = :6379 )'")
        assert out.stdout.strip() == "", "%s still talks to Redis:\n%s" % (name, out.stdout)


def test_kill_9_of_a_worker_holding_a_task_runs_it_again_at_once():
    """kill -9 of the node that runs a task (hipri is worker1's on the first worker host alone):
    RabbitMQ hands the unacknowledged task back when the connection drops, and the node systemd
    starts again runs it. The README states the time from the kill to the result."""
    nodes = inventory_vars(WORKERS[0]).get("celery_worker_nodes") or []
    if not any(isinstance(n, dict) and n.get("name") == "worker1" and "hipri" in n.get("queues", []) for n in nodes):
        pytest.skip("no node worker1 consuming hipri on %s" % WORKERS[0])
    host = host_of(WORKERS[0])
    unit = "celery-worker@worker1.service"
    old, seconds = kill_9_during_a_task(host, unit, 4343)
    print("RabbitMQ: kill -9 of the node running a 6 s task: its result %.1f s after the kill" % seconds)
    assert seconds < 120
    assert host.check_output("systemctl show -p MainPID --value %s" % unit) not in ("0", old)
