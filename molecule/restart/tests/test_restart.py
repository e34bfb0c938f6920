"""Restarts under load lose no task. 1,000 tasks (each records its completion) are in flight
while playbooks/restart.yml restarts the workers host by host; every task must complete, none
fail, and the journal must show no SIGKILL. Then playbooks/restart-brokers.yml under load (kombu's
own Redis transport), the failure cases (kill -9 of a worker's main process, a host restart), and
the kit's experimental transport against kombu's own."""

import json
import os
import shlex
import subprocess
import time

import pytest

from conftest import broadcast, host_of, hosts_in, inventory_vars, kill_9_during_a_task, playbook, run_client
from load import Load, clear_records, explained, records, restart_brokers_under_load, send

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
WORKERS = hosts_in("celery_workers")
BROKER = hosts_in("brokers")[0]
BEAT = hosts_in("celery_beat")


def main_pids():
    out = {}
    for name in WORKERS:
        for line in host_of(name).run(
                "for u in $(systemctl list-units --no-legend --plain 'celery-worker@*' | awk '{print $1}'); "
                "do echo $u $(systemctl show -p MainPID --value $u); done").stdout.splitlines():
            unit, pid = line.split()
            out["%s/%s" % (name, unit)] = pid
    return out


def test_rolling_restart_under_load_loses_no_task():
    clear_records()
    before = main_pids()
    load = Load(0, 1000, 0.15)
    time.sleep(3)  # tasks are in flight on both hosts
    started = time.time()
    proc = playbook("playbooks/restart.yml")
    seconds = time.time() - started
    report = load.wait()
    print("rolling restart took %.1f s; %d of 1000 tasks ran more than once: %s; client waited %s s"
          % (seconds, len(report["twice"]), report["twice"][:20], report["client_seconds"]))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert report["ok"], explained(report)
    after = main_pids()
    assert set(after) == set(before) and all(after[u] != before[u] for u in before), (before, after)
    for name in WORKERS:
        journal = host_of(name).run("journalctl --no-pager -u 'celery-worker@*' | grep -c SIGKILL").stdout.strip()
        assert journal == "0", "SIGKILL in %s's journal" % name


def test_restart_order_and_health_checks():
    """Host by host (batch 1), each batch health-checked before the next, beat last."""
    proc = playbook("playbooks/restart.yml", "-e", "celery_restart_batch=1")
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = proc.stdout
    waits = [text.index("Wait until this host's nodes answer ping", i) for i in [0]]
    assert waits
    assert text.count("PLAY [Rolling restart of the workers]") == len(WORKERS)
    assert text.rindex("PLAY [Restart beat]") > text.rindex("PLAY [Rolling restart of the workers]")


@pytest.mark.parametrize("args, words", [
    (["-e", "celery_restart_batch=0"], "celery_restart_batch is '0'"),
    (["-e", "celery_restart_batch=9"], "celery_restart_batch is '9'"),
    (["--limit", BEAT[0]], "No worker host in this run"),
])
def test_bad_requests_change_nothing(args, words):
    before = main_pids()
    proc = playbook("playbooks/restart.yml", *args)
    assert proc.returncode != 0
    assert words in proc.stdout, proc.stdout[-3000:]
    assert main_pids() == before


def test_kill_9_of_a_worker_is_restarted_and_its_task_delivered_again():
    clear_records()
    host = host_of(WORKERS[0])  # the only host consuming hipri
    unit = "celery-worker@worker1.service"

    def restarted(old, killed):
        while True:
            new = host.run("systemctl show -p MainPID --value %s" % unit).stdout.strip()
            if new not in ("0", old) and host.run("systemctl is-active %s" % unit).stdout.strip() == "active":
                return
            assert time.time() - killed < 10, "systemd did not restart the node within 10 s"
            time.sleep(0.5)

    _, seconds = kill_9_during_a_task(host, unit, 4242, while_waiting=restarted)
    # The scenario's visibility timeout is 30 s (the kit's default, 3600 s, is the wait on Redis).
    print("Redis: kill -9 of the node running a 6 s task: its result %.1f s after the kill (visibility timeout 30 s)"
          % seconds)
    assert records()[4242] >= 1


def test_restart_brokers_playbook_under_load_loses_none_and_runs_none_twice():
    """playbooks/restart-brokers.yml drains the nodes, restarts Redis and has them consume again
    under load (load.py): every task completes, once."""
    proc = restart_brokers_under_load("(one Redis)")
    assert "Restart the broker on each broker host" in proc.stdout


# Run on a worker host as the celery user, through the kit's transport and through kombu's own:
# take() takes a message off a queue of its own, with Redis shut down (systemd starts it again)
# between the take and the record of the message as unacknowledged; hand_back() takes one, shuts
# Redis down, and closes the channel as a worker that lost its connection does. Each reports
# where the message is once Redis is back. stop_with_a_take_in_flight() stops a consumer as a
# warm shutdown does, with a BRPOP in flight, and reports the queue's order after.
GAP_CLIENT = r"""
import contextlib, json, time, urllib.parse, uuid
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from celery.worker import state as worker_state
from proj.celery import app

def back(client):
    for _ in range(300):
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("Redis did not come back within 30 s")

def shut_down(client):
    # The app's Redis user may not run SHUTDOWN: the kit's user lets it, until Redis restarts
    # and reads its users again.
    login = json.loads(KIT_LOGIN)
    url = urllib.parse.urlsplit(app.conf.broker_url)
    kit = redis.Redis.from_url(url._replace(netloc="%s:%s@%s:%s" % (
        login[0], urllib.parse.quote(login[1], safe=""), url.hostname, url.port)).geturl())
    kit.execute_command("ACL", "SETUSER", urllib.parse.unquote(url.username), "+shutdown")
    try:
        client.shutdown()
    except redis.exceptions.ConnectionError:
        pass

def unacked(client, channel, marker):
    return [v for v in client.hvals(channel.qos.unacked_key) if marker.encode() in v]

@contextlib.contextmanager
def one_message(transport):
    # A queue of its own with one message on it, the marker in a header (the stored body is
    # base64); the state's "where" reports where the message is once Redis is back.
    marker, name = uuid.uuid4().hex, "kit-gap-" + uuid.uuid4().hex[:8]
    queue = Queue(name, Exchange(name), name)
    client = redis.Redis.from_url(app.conf.broker_url)
    with Connection(app.conf.broker_url, transport=transport,
                    transport_options=app.conf.broker_transport_options) as conn:
        channel = conn.channel()
        Producer(channel).publish({}, headers={"marker": marker}, exchange=queue.exchange,
                                  routing_key=name, declare=[queue])
        def where(message, error):
            back(client)
            if hasattr(channel.qos, "wait"):  # the kit's transport catches up in a thread
                assert channel.qos.wait(30), "the kit's transport did not catch up with Redis"
            return {"taken": message is not None, "error": error, "queued": client.llen(name),
                    "unacked": len(unacked(client, channel, marker))}
        yield conn, channel, client, marker, name, where

def take(transport):
    with one_message(transport) as (conn, channel, client, marker, name, where):
        record = channel.qos.append
        def shut_down_then_record(message, tag):
            shut_down(client)
            return record(message, tag)
        channel.qos.append = shut_down_then_record
        try:
            message, error = channel.basic_get(name, no_ack=False), None
        except conn.connection_errors as exc:
            message, error = None, repr(exc)
        state = where(message, error)
        if message is not None:
            message.ack()
            state["unacked_after_ack"] = len(unacked(client, channel, marker))
        channel.queue_delete(name)
        return state

class Running:
    def __init__(self, message):
        self.message = message

def hand_back(transport, running=False, cancel=False):
    # running: the worker runs the task as its channel closes, with Redis up (systemd stops
    # restarting a Redis shut down more than 5 times in 10 s); cancel: the worker cancels its
    # running tasks on connection loss (worker_cancel_long_running_tasks_on_connection_loss).
    app.conf.worker_cancel_long_running_tasks_on_connection_loss = cancel
    with one_message(transport) as (conn, channel, client, marker, name, where):
        message = channel.basic_get(name, no_ack=False)
        request = Running(message)
        if running:
            worker_state.active_requests.add(request)
        else:
            shut_down(client)
        try:
            channel.close()  # as a worker that lost its connection: hands back what it holds
            error = None
        except conn.connection_errors as exc:
            error = repr(exc)
        worker_state.active_requests.discard(request)
        state = where(message, error)
    with Connection(app.conf.broker_url, transport=transport,
                    transport_options=app.conf.broker_transport_options) as conn:
        channel = conn.channel()
        channel.queue_delete(name)
        for tag, value in client.hgetall(channel.qos.unacked_key).items():
            if marker.encode() in value:
                channel.qos.ack(tag.decode())
    return state

def stop_with_a_take_in_flight(transport):
    # Five messages queued; a BRPOP in flight, as a worker's loop leaves it; the consumer is
    # cancelled, as at a warm shutdown, and the connection closes. Returns the queue's order.
    name = "kit-stop-" + uuid.uuid4().hex[:8]
    queue = Queue(name, Exchange(name), name)
    client = redis.Redis.from_url(app.conf.broker_url)
    with Connection(app.conf.broker_url, transport=transport,
                    transport_options=app.conf.broker_transport_options) as conn:
        channel = conn.default_channel
        for n in range(1, 6):
            Producer(channel).publish({}, headers={"n": n}, exchange=queue.exchange, routing_key=name,
                                      declare=[queue])
        consumer = Consumer(channel, [queue], callbacks=[lambda body, message: None], accept=["json"])
        consumer.consume()
        conn.transport.cycle.on_poll_start()
        time.sleep(0.3)  # Redis has handed message 1 to the BRPOP
        consumer.cancel()
    order = [json.loads(raw)["headers"]["n"] for raw in reversed(client.lrange(name, 0, -1))]
    client.delete(name)
    return order

# The kit's transport is opt-in (celery_app_redis_unacked_retry above 0): the deployed module,
# with the 30 s that celery_app_redis_unacked_retry: 30 would render.
import celery_kit.redis_transport
celery_kit.redis_transport.QoS.retry_seconds = 30
KIT = "celery_kit.redis_transport:Transport"
print(json.dumps({"kit": take(KIT), "kombu": take("redis"),
                  "kit_hand_back": hand_back(KIT),
                  "kombu_hand_back": hand_back("redis"),
                  "kit_hand_back_running": hand_back(KIT, running=True),
                  "kit_hand_back_cancelled": hand_back(KIT, running=True, cancel=True),
                  "kit_stop": stop_with_a_take_in_flight(KIT),
                  "kombu_stop": stop_with_a_take_in_flight("redis")}))
"""


def test_a_task_held_as_redis_restarts_is_kept():
    """The two steps of kombu's Redis transport that lose a message when Redis restarts, forced.
    Redis shuts down after a message was taken off its queue and before it was recorded as
    unacknowledged (celery/kombu#1733): through the kit's transport (celery_kit.redis_transport) the
    message is recorded once Redis is back; through kombu's own it is in neither place. A channel
    closes while Redis is down, as a worker's does when it loses its connection: through the
    kit's transport the message it held is back in its queue once Redis is; through kombu's own
    it stays unacknowledged until the visibility timeout. The kit's transport does these steps
    in a thread of its own once Redis is back (the close returns at once), leaves a task that is
    still running to its own acknowledgement, and hands it back too when the worker cancels its
    running tasks on connection loss. A worker stops with a BRPOP in flight,
    as at a warm shutdown: the message Redis handed it goes back to the front of its queue
    through the kit's transport; kombu requeues it at the back, behind everything queued since.
    Kombu's results show the test hits each gap: should they change, kombu has closed a gap and
    the kit's transport can go."""
    login = json.dumps(["celery-kit", inventory_vars(BROKER)["vault_redis_broker_kit_password"]])
    out = run_client(host_of(WORKERS[0]), GAP_CLIENT.replace("KIT_LOGIN", repr(login)), timeout=180)
    assert out["kit"] == {"taken": True, "error": None, "queued": 0, "unacked": 1,
                          "unacked_after_ack": 0}, out
    assert out["kombu"]["taken"] is False and out["kombu"]["queued"] == 0 \
        and out["kombu"]["unacked"] == 0, out
    assert out["kit_hand_back"] == {"taken": True, "error": None, "queued": 1, "unacked": 0}, out
    assert out["kombu_hand_back"]["queued"] == 0 and out["kombu_hand_back"]["unacked"] == 1, out
    # A task the worker still runs is left to its own acknowledgement, unless the worker cancels
    # its running tasks on connection loss: then it goes back to its queue with the rest.
    assert out["kit_hand_back_running"] == {"taken": True, "error": None, "queued": 0, "unacked": 1}, out
    assert out["kit_hand_back_cancelled"] == {"taken": True, "error": None, "queued": 1, "unacked": 0}, out
    # A worker stops with a BRPOP in flight: the message it was handed goes back to the front of
    # its queue through the kit's transport, and to the back through kombu's.
    assert out["kit_stop"] == [1, 2, 3, 4, 5], out
    assert out["kombu_stop"] == [2, 3, 4, 5, 1], out


def test_the_kit_transport_stands_down_for_a_kombu_it_was_not_written_for():
    """The deployed kombu is the one celery_kit.redis_transport was written for, which it then
    provides; with another kombu version its Transport is kombu's own."""
    code = "\n".join([
        "import importlib, json, kombu",
        "from kombu.transport import redis",
        "import celery_kit.redis_transport as ours",
        "kit = ours.Transport is not redis.Transport",
        "real, kombu.__version__ = kombu.__version__, '9.9.0'",
        "print(json.dumps({'real': real, 'kit': kit, 'other': importlib.reload(ours).Transport is redis.Transport}))"])
    got = run_client(host_of(WORKERS[0]), code)
    assert got["kit"] and got["other"], got


def test_stop_and_start_playbooks():
    proc = playbook("playbooks/stop.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in WORKERS:
        out = host_of(name).run("systemctl is-active $(systemctl list-units --all --no-legend --plain "
                                "'celery-worker@*' | awk '{print $1}')")
        assert set(out.stdout.split()) == {"inactive"}, (name, out.stdout)
    assert not host_of(BEAT[0]).service("celerybeat").is_running
    proc = playbook("playbooks/start.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    report = send(6000, 10, 0)
    assert report["ok"], explained(report)
    assert host_of(BEAT[0]).service("celerybeat").is_running


def control(*args):
    proc = playbook("playbooks/control.yml", *args)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def inspect(method):
    return broadcast(method)


def test_control_playbook():
    def pools():
        return {k: len(v["pool"]["processes"]) for k, v in inspect("stats").items()}

    before = pools()
    control("-e", "celery_control=pool_grow", "-e", "celery_control_n=1")
    deadline = time.time() + 20
    while True:  # the pool starts the new process in the background
        grown = pools()
        if all(grown[k] == before[k] + 1 for k in before):
            break
        assert time.time() < deadline, (before, grown)
        time.sleep(1)
    control("-e", "celery_control=pool_shrink", "-e", "celery_control_n=1")
    deadline = time.time() + 20
    while pools() != before:
        assert time.time() < deadline, (before, pools())
        time.sleep(1)
    # A queue the app's Redis user may not reach is refused before any node is told.
    proc = playbook("playbooks/control.yml", "-e", "celery_control=add_consumer", "-e", "celery_control_queue=undeclared")
    assert proc.returncode != 0 and "may not reach queue 'undeclared'" in proc.stdout, proc.stdout[-3000:]
    control("-e", "celery_control=add_consumer", "-e", "celery_control_queue=extra")
    queues = inspect("active_queues")
    assert all("extra" in [q["name"] for q in v] for v in queues.values()), queues
    control("-e", "celery_control=cancel_consumer", "-e", "celery_control_queue=extra")
    queues = inspect("active_queues")
    assert not any("extra" in [q["name"] for q in v] for v in queues.values()), queues
    control("-e", "celery_control=events_on")
    control("-e", "celery_control=events_off")
    proc = playbook("playbooks/control.yml", "-e", "celery_control=reboot")
    assert proc.returncode != 0 and "celery_control is 'reboot'" in proc.stdout


def test_status_playbook_shows_every_node():
    proc = playbook("playbooks/status.yml")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for name in WORKERS:
        for line in host_of(name).run("systemctl list-units --no-legend --plain 'celery-worker@*'").stdout.splitlines():
            unit = line.split()[0]
            rows = [r for r in proc.stdout.splitlines() if name in r and unit in r]
            assert rows and "pong" in rows[0] and "active/running" in rows[0], (unit, proc.stdout[-3000:])
            assert rows[0].rstrip("'\" ").split()[-1] == "4", rows[0]  # pool size (celery_worker_concurrency)


def watchdog_until_restarted(host, node, runs=4):
    """Runs the node's watchdog as its timer does, until it restarted the node (its MainPID
    changed) or `runs` times; the timer is stopped meanwhile, so that every check is counted
    here. Returns the number of checks and the watchdog's journal of this test."""
    unit, timer = "celery-worker@%s.service" % node, "celery-watchdog@%s.timer" % node
    assert host.check_output("systemctl is-active %s" % timer) == "active"
    since = host.check_output("date '+%Y-%m-%d %H:%M:%S'")
    old = host.check_output("systemctl show -p MainPID --value %s" % unit)
    host.run("systemctl stop %s" % timer)
    try:
        for run in range(1, runs + 1):
            started = host.run("systemctl start celery-watchdog@%s.service" % node)
            if started.rc != 0:
                break
            if host.check_output("systemctl show -p MainPID --value %s" % unit) not in (old, "0"):
                break
    finally:
        host.run("systemctl start %s" % timer)
    journal = host.check_output("journalctl --no-pager -o cat -u celery-watchdog@%s.service --since %s"
                                % (node, shlex.quote(since)))
    assert started.rc == 0 and "Traceback" not in journal, journal
    return run, journal


def expect_watchdog_restart(make_stuck, reason, first):
    """A healthy node passes the watchdog's check; once make_stuck(host, pid) has stopped it,
    the watchdog restarts that node at its third failed check in a row (the default
    celery_worker_watchdog_failures), with the reason in its journal; the restarted node answers
    and consumes its queues again, and no other node restarted."""
    host, node = host_of(WORKERS[0]), "worker1"
    unit = "celery-worker@%s.service" % node
    runs, journal = watchdog_until_restarted(host, node, runs=1)
    assert runs == 1 and "restarting" not in journal and journal.count("check ") == 0, journal
    before = main_pids()
    make_stuck(host, host.check_output("systemctl show -p MainPID --value %s" % unit))
    runs, journal = watchdog_until_restarted(host, node)
    print("watchdog: restarted at check %d: %s" % (runs, [l for l in journal.splitlines() if "restarting" in l]))
    assert runs == 3 and reason in journal and "3 checks in a row: restarting it" in journal, journal
    after = main_pids()
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert changed == ["%s/%s" % (WORKERS[0], unit)], changed
    report = send(first, 20, 0)
    assert report["ok"], explained(report)


def test_new_redis_passwords_need_no_redis_restart_and_lose_no_task():
    """site.yml with a new app password (the old one kept in redis_broker_password_previous, as
    for producers outside the kit) and a new kit password, under load: Redis keeps its process
    (the users change through ACL SETUSER), the nodes restart onto the new password, and no task
    is lost; the load's client logs in with the old password throughout. Then back again."""
    clear_records()
    broker = host_of(BROKER)
    pid = broker.run("systemctl show -p MainPID --value redis-server").stdout.strip()
    old = inventory_vars(BROKER)["vault_redis_broker_password"]
    load = Load(0, 600, 0.1)
    time.sleep(3)  # tasks are in flight
    started = time.time()
    try:
        proc = playbook("site.yml", "-e", "vault_redis_broker_password=rotated-Redis-pass-0123456789",
                        "-e", "redis_broker_password_previous=%s" % old,
                        "-e", "vault_redis_broker_kit_password=rotated-Redis-kit-0123456789")
        seconds = time.time() - started
        report = load.wait()
    finally:
        back = playbook("site.yml")
    print("site.yml with new passwords took %.1f s; %d of 600 tasks ran more than once"
          % (seconds, len(report["twice"])))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert report["ok"], explained(report)
    assert back.returncode == 0, back.stdout[-4000:]
    assert broker.run("systemctl show -p MainPID --value redis-server").stdout.strip() == pid


def test_the_watchdog_restarts_a_node_that_stopped_consuming():
    """celery control cancel_consumer: the node answers ping but no longer reads celery."""
    def cancel(host, pid):
        code = ("import json; from proj.celery import app; print(json.dumps(app.control.cancel_consumer("
                "'celery', destination=['worker1@%s'], reply=True)))" % WORKERS[0])
        assert run_client(host, code), "no node answered cancel_consumer"
    expect_watchdog_restart(cancel, "answers ping but does not consume celery", 7000)


def test_the_watchdog_restarts_a_node_whose_main_process_is_stopped():
    """SIGSTOP of the node's main process: it neither answers nor consumes; the restart's
    SIGTERM, with the SIGCONT systemd sends after it, ends it with a warm shutdown."""
    expect_watchdog_restart(lambda host, pid: host.run("kill -STOP %s" % pid), "does not answer ping", 7100)


def test_host_restart_brings_every_service_back():
    for name in WORKERS + BEAT + [BROKER]:
        subprocess.run(["docker", "restart", name], check=True, timeout=120)
    deadline = time.time() + 90
    while True:
        report = send(5000, 20, 0)
        if report["ok"] or time.time() > deadline:
            break
        time.sleep(5)  # the cluster is still coming back
    assert report["ok"], explained(report)
    for name in WORKERS:
        out = host_of(name).run("systemctl is-active 'celery-worker@*'")
        assert "inactive" not in out.stdout and "failed" not in out.stdout
    assert host_of(BEAT[0]).service("celerybeat").is_running
