"""Restarts under load lose no task. 1,000 tasks (each records its completion) are in flight
while playbooks/restart.yml restarts the workers host by host; every task must complete, none
fail, and the journal must show no SIGKILL. Then the failure cases: kill -9 of a worker's main
process, a broker restart mid-load, and a host (container) restart."""

import collections
import os
import re
import subprocess
import threading
import time

import pytest

from conftest import broadcast, host_of, hosts_in, run_client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
WORKERS = hosts_in("celery_workers")
BROKER = hosts_in("brokers")[0]
BEAT = hosts_in("celery_beat")


def playbook(*args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory",
               ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]] + list(args),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    proc.stdout = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)
    return proc


def main_pids():
    out = {}
    for name in WORKERS:
        for line in host_of(name).run(
                "for u in $(systemctl list-units --no-legend --plain 'celery-worker@*' | awk '{print $1}'); "
                "do echo $u $(systemctl show -p MainPID --value $u); done").stdout.splitlines():
            unit, pid = line.split()
            out["%s/%s" % (name, unit)] = pid
    return out


def records():
    """n -> number of times a task recorded it, over every worker host."""
    counts = collections.Counter()
    for name in WORKERS:
        out = host_of(name).run("cat /var/lib/celery/records/*.log 2>/dev/null")
        for line in out.stdout.splitlines():
            counts[int(line.split()[0])] += 1
    return counts


def clear_records():
    for name in WORKERS:
        host_of(name).run("rm -f /var/lib/celery/records/*.log")


def send(first, count, seconds):
    """Send record(n) for n in [first, first+count); wait for every result; return the failures.
    Like a real client, it fetches a result again when its connection to Redis broke (a broker
    restart), or when no word of it came for 30 s: the Redis result backend learns of a result
    by pub/sub, and after a restart a result published between its read of the stored results
    and its new subscription never reaches it (ResultConsumer._reconnect_pubsub in
    celery/backends/redis.py; celery/celery#4857), while each get() reads the stored result
    first. A task that failed, or a result still not there after 10 tries (5 minutes), is a
    failure."""
    return run_client(host_of(WORKERS[0]), "\n".join([
        "import json, time",
        "import celery.exceptions",
        "import redis.exceptions",
        "from proj.tasks import record",
        "results = [record.delay(n, %r) for n in range(%d, %d)]" % (seconds, first, first + count),
        "failed = []",
        "for r in results:",
        "    for attempt in range(10):",
        "        try:",
        "            r.get(timeout=30)",
        "        except (redis.exceptions.ConnectionError, ConnectionError, celery.exceptions.TimeoutError) as exc:",
        "            if attempt == 9:",
        "                failed.append(repr(exc))",
        "            time.sleep(1)",
        "            continue",
        "        except Exception as exc:",
        "            failed.append(repr(exc))",
        "        break",
        "print(json.dumps(failed))"]), timeout=400)


def test_rolling_restart_under_load_loses_no_task():
    clear_records()
    before = main_pids()
    outcome = {}

    def restart():
        time.sleep(3)  # tasks are in flight on both hosts
        started = time.time()
        outcome["proc"] = playbook("playbooks/restart.yml")
        outcome["seconds"] = time.time() - started

    roller = threading.Thread(target=restart)
    roller.start()
    failed = send(0, 1000, 0.15)
    roller.join()
    proc = outcome["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    after = main_pids()
    assert set(after) == set(before) and all(after[u] != before[u] for u in before), (before, after)
    assert failed == [], failed[:5]
    counts = records()
    missing = [n for n in range(1000) if counts[n] == 0]
    twice = sorted(n for n in range(1000) if counts[n] > 1)
    print("rolling restart took %.1f s; %d of 1000 tasks ran more than once: %s"
          % (outcome["seconds"], len(twice), twice[:20]))
    assert not missing, "%d tasks never completed: %s" % (len(missing), missing[:20])
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
    old = host.run("systemctl show -p MainPID --value %s" % unit).stdout.strip()
    result = {}

    def long_task():
        result["failed"] = run_client(host, "\n".join([
            "import json",
            "from proj.tasks import record",
            "r = record.apply_async((4242, 6), queue='hipri')",
            "r.get(timeout=180)",
            "print(json.dumps([]))"]), timeout=200)

    sender = threading.Thread(target=long_task)
    sender.start()
    time.sleep(3)  # the task is running on worker1
    assert host.run("kill -9 %s" % old).rc == 0
    killed = time.time()
    while True:
        new = host.run("systemctl show -p MainPID --value %s" % unit).stdout.strip()
        if new not in ("0", old) and host.run("systemctl is-active %s" % unit).stdout.strip() == "active":
            break
        assert time.time() - killed < 10, "systemd did not restart the node within 10 s"
        time.sleep(0.5)
    sender.join()
    assert result["failed"] == []
    assert records()[4242] >= 1


def test_broker_restart_mid_load_every_task_finishes():
    clear_records()
    broker = host_of(BROKER)
    outcome = {}

    def load():
        outcome["failed"] = send(0, 300, 0.1)

    sender = threading.Thread(target=load)
    sender.start()
    time.sleep(3)
    assert broker.run("systemctl restart redis-server").rc == 0
    sender.join()
    assert outcome["failed"] == [], outcome["failed"][:5]
    counts = records()
    assert not [n for n in range(300) if counts[n] == 0]


# Run on a worker host as the celery user, through the kit's transport and through kombu's own:
# take() takes a message off a queue of its own, with Redis shut down (systemd starts it again)
# between the take and the record of the message as unacknowledged; hand_back() takes one, shuts
# Redis down, and closes the channel as a worker that lost its connection does. Each reports
# where the message is once Redis is back.
GAP_CLIENT = r"""
import contextlib, json, time, uuid
import redis
from kombu import Connection, Exchange, Producer, Queue
from proj.celery import app

def back(client):
    for _ in range(300):
        try:
            return client.ping()
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise SystemExit("Redis did not come back within 30 s")

def shut_down(client):
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

def hand_back(transport):
    with one_message(transport) as (conn, channel, client, marker, name, where):
        message = channel.basic_get(name, no_ack=False)
        shut_down(client)
        try:
            channel.close()  # as a worker that lost its connection: hands back what it holds
            error = None
        except conn.connection_errors as exc:
            error = repr(exc)
        state = where(message, error)
    with Connection(app.conf.broker_url, transport=transport,
                    transport_options=app.conf.broker_transport_options) as conn:
        channel = conn.channel()
        channel.queue_delete(name)
        for tag, value in client.hgetall(channel.qos.unacked_key).items():
            if marker.encode() in value:
                channel.qos.ack(tag.decode())
    return state

print(json.dumps({"kit": take(app.conf.broker_transport), "kombu": take("redis"),
                  "kit_hand_back": hand_back(app.conf.broker_transport),
                  "kombu_hand_back": hand_back("redis")}))
"""


def test_a_task_held_as_redis_restarts_is_kept():
    """The two steps of kombu's Redis transport that lose a message when Redis restarts, forced.
    Redis shuts down after a message was taken off its queue and before it was recorded as
    unacknowledged (celery/kombu#1733): through the kit's transport (kit_redis_transport.py) the
    message is recorded once Redis is back; through kombu's own it is in neither place. A channel
    closes while Redis is down, as a worker's does when it loses its connection: through the
    kit's transport the message it held is back in its queue once Redis is; through kombu's own
    it stays unacknowledged until the visibility timeout. Kombu's results show the test hits
    both gaps: should they change, kombu has closed a gap and the kit's transport can go."""
    out = run_client(host_of(WORKERS[0]), GAP_CLIENT, timeout=180)
    assert out["kit"] == {"taken": True, "error": None, "queued": 0, "unacked": 1,
                          "unacked_after_ack": 0}, out
    assert out["kombu"]["taken"] is False and out["kombu"]["queued"] == 0 \
        and out["kombu"]["unacked"] == 0, out
    assert out["kit_hand_back"] == {"taken": True, "error": None, "queued": 1, "unacked": 0}, out
    assert out["kombu_hand_back"]["queued"] == 0 and out["kombu_hand_back"]["unacked"] == 1, out


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
    assert send(6000, 10, 0) == []
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


def test_host_restart_brings_every_service_back():
    for name in WORKERS + BEAT + [BROKER]:
        subprocess.run(["docker", "restart", name], check=True, timeout=120)
    deadline = time.time() + 90
    while True:
        try:
            failed = send(5000, 20, 0)
            break
        except AssertionError:
            assert time.time() < deadline, "the cluster did not come back"
            time.sleep(5)
    assert failed == []
    for name in WORKERS:
        out = host_of(name).run("systemctl is-active 'celery-worker@*'")
        assert "inactive" not in out.stdout and "failed" not in out.stdout
    assert host_of(BEAT[0]).service("celerybeat").is_running
