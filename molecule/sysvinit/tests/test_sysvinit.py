"""Verify the init.d path on a host without systemd: the same /etc/default files drive
/etc/init.d/celeryd and /etc/init.d/celerybeat; start, status, restart and stop behave as LSB
says; tasks run; the scripts refuse a config file that others could change."""

import json
import os
import shlex
import time

import pytest
import testinfra.utils.ansible_runner

RUNNER = testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])
NAME = RUNNER.get_hosts("all")[0]
NODES = ["worker1", "worker2"]


@pytest.fixture(scope="module")
def host():
    return testinfra.get_host("ansible://%s" % NAME, ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def pids(host, names):
    return {n: host.file("/run/celery/%s.pid" % n).content_string.strip() for n in names}


def run_client(host, code, timeout=90):
    """Python as the celery user with the app's environment loaded, as the init scripts run it."""
    cmd = ("cd /opt/celery/current/app && timeout %d runuser -u celery -- /bin/sh -c "
           "'set -a; . /etc/celery-kit/environment; set +a; exec /opt/celery/current/venv/bin/python -c \"$0\"' %s"
           % (timeout, shlex.quote(code)))
    out = host.run(cmd)
    assert out.rc == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def round_trip(host):
    return run_client(host, "import json; from proj.tasks import add, urgent; "
                            "print(json.dumps([add.delay(2, 3).get(timeout=60), urgent.delay(7).get(timeout=60)['value']]))")


def test_pid_1_is_not_systemd(host):
    assert host.file("/proc/1/comm").content_string.strip() == "init"
    assert not host.file("/run/systemd/system").exists
    assert not host.package("systemd").is_installed


def test_services_enabled_at_boot(host):
    for script in ("celeryd", "celerybeat"):
        assert host.file("/etc/init.d/%s" % script).mode == 0o755
        assert host.run("ls /etc/rc2.d/ | grep -q 'S[0-9]*%s$'" % script).rc == 0, script
    assert not host.file("/etc/systemd/system/celery-worker@.service").exists


def test_status_reports_every_node_running(host):
    out = host.run("service celeryd status")
    assert out.rc == 0, out.stdout + out.stderr
    for node in NODES:
        assert "node %s@" % node in out.stdout and "is running" in out.stdout
    assert host.run("service celerybeat status").rc == 0


def test_tasks_run_and_per_node_options_apply(host):
    assert round_trip(host) == [5, 7]
    stats = run_client(host, "import json; from proj.celery import app; "
                             "print(json.dumps(app.control.inspect(timeout=10).stats()))")
    assert stats["worker1@%s" % NAME]["pool"]["max-concurrency"] == 1
    assert stats["worker2@%s" % NAME]["pool"]["max-concurrency"] == 2
    queues = run_client(host, "import json; from proj.celery import app; "
                              "print(json.dumps(app.control.inspect(timeout=10).active_queues()))")
    assert sorted(q["name"] for q in queues["worker1@%s" % NAME]) == ["celery", "hipri", "worker1@%s.dq2" % NAME]
    assert sorted(q["name"] for q in queues["worker2@%s" % NAME]) == ["celery", "worker2@%s.dq2" % NAME]


def test_beat_runs_the_schedule(host):
    deadline = time.time() + 30
    while True:
        out = host.run("cat /var/lib/celery/heartbeat")
        now = float(host.run("date +%s.%N").stdout)
        if out.rc == 0 and now - float(out.stdout.split()[0]) < 10:
            break
        assert time.time() < deadline, "beat's heartbeat did not run"
        time.sleep(2)


def test_restart_replaces_every_process(host):
    before = pids(host, NODES + ["beat"])
    assert host.run("service celeryd restart").rc == 0
    assert host.run("service celerybeat restart").rc == 0
    after = pids(host, NODES + ["beat"])
    assert all(before[n] != after[n] for n in before), (before, after)
    assert host.run("service celeryd status").rc == 0
    assert round_trip(host) == [5, 7]


def test_stop_then_start(host):
    assert host.run("service celeryd stop").rc == 0
    assert host.run("service celerybeat stop").rc == 0
    assert host.run("service celeryd status").rc == 3
    assert host.run("service celerybeat status").rc == 3
    assert host.run("pgrep -u celery -f 'celery'").rc == 1, "celery processes left after stop"
    assert host.run("service celeryd start").rc == 0
    assert host.run("service celerybeat start").rc == 0
    assert host.run("service celeryd status").rc == 0
    assert round_trip(host) == [5, 7]


@pytest.mark.parametrize("script, config", [("celeryd", "/etc/default/celeryd"),
                                            ("celerybeat", "/etc/default/celerybeat")])
def test_script_refuses_a_config_others_can_change(host, script, config):
    try:
        host.run_test("chmod g+w %s" % config)
        for action in ("status", "restart"):
            out = host.run("/etc/init.d/%s %s" % (script, action))
            assert out.rc == 1, (action, out.stdout, out.stderr)
            assert config in out.stdout + out.stderr
        host.run_test("chmod g-w %s && chown nobody %s" % (config, config))
        out = host.run("/etc/init.d/%s start" % script)
        assert out.rc == 1 and "owned by root" in out.stdout + out.stderr
    finally:
        host.run("chown root %s; chmod 0644 %s" % (config, config))
    # Refusing changed nothing: the services still run.
    assert host.run("/etc/init.d/%s status" % script).rc == 0


def test_services_come_back_after_a_host_restart(host):
    """The container restarts (sysvinit halts on SIGINT); rc2.d starts Redis, workers and beat."""
    import subprocess
    subprocess.run(["docker", "restart", NAME], check=True, timeout=120)
    deadline = time.time() + 60
    while host.run("service celeryd status").rc != 0 or host.run("service celerybeat status").rc != 0:
        assert time.time() < deadline, host.run("service celeryd status").stdout
        time.sleep(2)
    assert round_trip(host) == [5, 7]
