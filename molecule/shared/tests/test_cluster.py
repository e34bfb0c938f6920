"""Verify the deployed cluster by what it does: services, users, files, and real tasks."""

import re
import time

import pytest

from conftest import BROKER, broadcast, host_of, hosts_in, inventory_vars, playbook, run_client, worker_nodes

BROKERS = hosts_in("brokers")
WORKERS = hosts_in("celery_workers")
BEAT = hosts_in("celery_beat")


# --- services ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", WORKERS)
def test_every_worker_node_runs_and_starts_at_boot(name):
    host = host_of(name)
    for node in worker_nodes(name):
        svc = host.service("celery-worker@%s" % node)
        assert svc.is_running, node
        assert svc.is_enabled, node


@pytest.mark.parametrize("name", WORKERS)
def test_every_node_passes_its_watchdog_check(name):
    """Each node's watchdog timer runs, and one check (as its timer starts it) passes: the node
    answers, consumes its queues and takes the probe off its own queue, through this scenario's
    broker and pools; nothing is counted against it and it is not restarted."""
    host = host_of(name)
    for node in worker_nodes(name):
        assert host.service("celery-watchdog@%s.timer" % node).is_running, node
        pid = host.check_output("systemctl show -p MainPID --value celery-worker@%s" % node)
        since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
        run = host.run("systemctl start celery-watchdog@%s.service" % node)
        journal = host.check_output("journalctl --no-pager -o cat -u celery-watchdog@%s.service --since '%s'"
                                    % (node, since))
        assert run.rc == 0, (node, journal)
        assert not any(word in journal for word in ("Traceback", "before a restart", "restarting")), (node, journal)
        assert host.check_output("systemctl show -p MainPID --value celery-worker@%s" % node) == pid, node


@pytest.mark.parametrize("name", BEAT)
def test_beat_runs_and_starts_at_boot(name):
    svc = host_of(name).service("celerybeat")
    assert svc.is_running
    assert svc.is_enabled


# --- users and processes ----------------------------------------------------------------

@pytest.mark.parametrize("name", WORKERS + BEAT)
def test_celery_user_is_unprivileged(name):
    user = host_of(name).user("celery")
    assert user.exists
    assert user.group == "celery"
    assert user.home == "/var/lib/celery"
    assert user.shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert user.uid < 1000  # a system account


@pytest.mark.parametrize("name", WORKERS + BEAT)
def test_celery_processes_run_as_celery(name):
    host = host_of(name)
    procs = [p for p in host.process.filter() if "celery" in p.args and "venv/bin" in p.args]
    assert procs, "no celery process on %s" % name
    assert {p.user for p in procs} == {"celery"}, [(p.user, p.args) for p in procs]


@pytest.mark.parametrize("name", WORKERS)
def test_each_node_has_its_pool(name):
    """Every node's main process exists under the node's name, with pool children when its
    pool is prefork (threads, gevent and solo pools run inside the main process)."""
    host = host_of(name)
    for node in worker_nodes(name):
        pid = int(host.file("/run/celery/%s.pid" % node).content_string.strip())
        assert host.process.get(pid=pid).user == "celery"
        dropin = host.file("/etc/systemd/system/celery-worker@%s.service.d/node.conf" % node).content_string
        if "--pool=prefork" in dropin:
            assert host.process.filter(ppid=pid), "node %s has no pool processes" % node


# --- files ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", WORKERS)
def test_celeryd_defaults_file(name):
    f = host_of(name).file("/etc/default/celeryd")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
    text = f.content_string
    assert 'CELERYD_NODES="%s"' % " ".join(worker_nodes(name)) in text
    for key in ("CELERY_BIN", "CELERY_APP", "CELERYD_CHDIR", "CELERYD_OPTS", "CELERYD_LOG_LEVEL",
                "CELERYD_USER", "CELERYD_GROUP", "CELERY_CREATE_DIRS"):
        assert "\n%s=" % key in text, key
    assert 'CELERYD_LOG_FILE="/var/log/celery/%n%I.log"' in text
    assert 'CELERYD_PID_FILE="/run/celery/%n.pid"' in text


@pytest.mark.parametrize("name", BEAT)
def test_celerybeat_defaults_file_and_schedule(name):
    host = host_of(name)
    f = host.file("/etc/default/celerybeat")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o644)
    assert "--schedule=/var/lib/celery/beat/celerybeat-schedule" in f.content_string
    schedule_dir = host.file("/var/lib/celery/beat")
    assert (schedule_dir.user, schedule_dir.mode) == ("celery", 0o750)
    assert host.run("ls /var/lib/celery/beat/ | grep -q celerybeat-schedule").rc == 0


@pytest.mark.parametrize("name", WORKERS + BEAT)
def test_app_files_hold_the_secret_safely(name):
    host = host_of(name)
    for path in ("/opt/celery/kit/celery_kit/config.py", "/etc/celery-kit/environment"):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "celery", 0o640), path
    # The release (code and virtualenv) is root's: the celery user can run it but not change it.
    release = host.run("readlink -f /opt/celery/current").stdout.strip()
    assert release.startswith("/opt/celery/releases/"), release
    writable = host.run("find %s -perm /022 ! -type l | head -5" % release).stdout.strip()
    assert writable == "", writable
    assert host.file(release).user == "root" and host.file(release + "/venv/bin/celery").user == "root"
    logs = host.file("/var/log/celery")
    assert (logs.user, logs.group, logs.mode) == ("celery", "celery", 0o750)


def test_every_host_runs_the_same_whole_release():
    """Each Celery host's `current` names one release directory, the same on every host, that
    the kit completed (it imported there); the worker nodes run from it."""
    releases = {}
    for name in WORKERS + BEAT + hosts_in("flower"):
        host = host_of(name)
        release = host.run("readlink -f /opt/celery/current").stdout.strip()
        assert host.file(release + "/.complete").exists, (name, release)
        releases[name] = release
        for node in worker_nodes(name) if name in WORKERS else []:
            pid = host.run("systemctl show -p MainPID --value celery-worker@%s" % node).stdout.strip()
            cwd = host.run("readlink /proc/%s/cwd" % pid).stdout.strip()
            assert cwd == release + "/app", (name, node, cwd)
    assert len(set(releases.values())) == 1, releases


# --- behaviour: tasks through the deployed broker ----------------------------------------

def test_app_uses_the_chosen_broker():
    tls = inventory_vars(hosts_in("brokers")[0]).get("redis_broker_tls")
    scheme = {"redis": "rediss://" if tls else "redis://", "rabbitmq": "amqp://"}[BROKER]
    for name in WORKERS + BEAT:
        config = host_of(name).file("/opt/celery/kit/celery_kit/config.py").content_string
        assert 'broker_url = "%s' % scheme in config, name


def test_task_events_only_with_a_consumer():
    """Workers send task events when the inventory deploys Flower or a monitoring host, which
    consume them, and not otherwise."""
    consumed = bool(hosts_in("flower") or hosts_in("monitoring"))
    for name in WORKERS:
        config = host_of(name).file("/opt/celery/kit/celery_kit/config.py").content_string
        assert ("worker_send_task_events = True" in config) == consumed, name


def test_add_round_trips_through_the_broker():
    got = run_client(host_of(WORKERS[-1]), (
        "import json; from proj.tasks import add; "
        "print(json.dumps(add.delay(2, 3).get(timeout=60)))"))
    assert got == 5


def test_hipri_task_is_consumed_by_the_hipri_worker():
    """proj.tasks.urgent is routed to hipri, which only the first worker host consumes."""
    got = run_client(host_of(WORKERS[-1]), (
        "import json; from proj.tasks import urgent; "
        "print(json.dumps([urgent.delay(i).get(timeout=60) for i in range(5)]))"))
    assert [r["value"] for r in got] == list(range(5))
    assert {r["host"] for r in got} == {WORKERS[0]}


def test_retrying_task_succeeds_after_its_retries():
    got = run_client(host_of(WORKERS[0]), (
        "import json; from proj.tasks import flaky; "
        "print(json.dumps(flaky.delay(2).get(timeout=60)))"))
    assert got == 2


def test_every_node_answers_ping():
    expected = {"%s@%s" % (node, name) for name in WORKERS for node in worker_nodes(name)}
    assert set(broadcast("ping", expected)) == expected


def test_periodic_task_has_run():
    """beat sends proj.tasks.heartbeat every few seconds; some worker must have run it lately."""
    deadline = time.time() + 60
    while True:
        stamps = []
        for name in WORKERS:
            out = host_of(name).run("cat /var/lib/celery/heartbeat")
            if out.rc == 0:
                stamps.append(float(out.stdout.split()[0]))
        now = float(host_of(WORKERS[0]).run("date +%s.%N").stdout)
        if stamps and now - max(stamps) < 30:
            break
        assert time.time() < deadline, "no heartbeat in the last 30 s (stamps: %s)" % stamps
        time.sleep(2)
    beat_log = host_of(BEAT[0]).file("/var/log/celery/beat.log").content_string
    assert "Sending due task heartbeat" in beat_log


def test_smoke_shows_the_task_features_of_the_notes():
    """./kit smoke's playbook: a chain, a chord through the result backend, a rate limit,
    countdown, expires and a failure, each as the notes teach; the app's task_failure handler
    logs the failure on the worker that ran it."""
    run = playbook("playbooks/smoke.yml")
    assert run.returncode == 0, run.stdout[-3000:]
    lines = [line for line in run.stdout.splitlines() if re.search(r"\s(ok\s+[0-9.]+s|FAILED\s+[0-9.]+s|skipped)", line)]
    # RabbitMQ's rpc replies keep no results, which a chord needs (celery.backends.rpc).
    chord = "skipped" if inventory_vars(WORKERS[0]).get("celery_result_backend", "broker") in ("broker", "rpc") \
        and BROKER == "rabbitmq" else "ok"
    for feature, outcome in (("[chain]", "ok"), ("[chord]", chord), ("[rate_limit 30/m]", "ok"), ("[countdown=2]", "ok"),
                             ("[expires, past]", "ok"), ("[task_failure]", "ok")):
        assert any(feature in line and re.search(r"\s%s(\s|$)" % outcome, line) for line in lines), (feature, lines)
    logged = [host_of(name).run("grep -rhs \"proj.tasks.fail\\[.*failed: RuntimeError('on purpose')\" "
                                "/var/log/celery/").stdout for name in WORKERS]
    assert any(logged), "no worker logged the failure (task_failure handler)"
