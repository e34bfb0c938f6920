"""The cluster's Celery metrics for Prometheus, run by celery-exporter.service (the monitoring
role) as the celery user, with the app's Python in the app directory and the kit's environment
file loaded:

    python -m celery_kit.exporter APP CONFIG_FILE

CONFIG_FILE is JSON: {"address", "port", "interval", "queues", "state_dir", "beat_marker"}.

Metrics (one exporter for the cluster, so the counters are the cluster's):
- celery_tasks_total{task,state}: task events by task name: received, succeeded, failed,
  retried, rejected, revoked. Workers send task events only when something consumes them, and
  the kit turns them on (worker_send_task_events) whenever the inventory has a monitoring host.
- celery_task_runtime_seconds{task}: a histogram of the runtimes of succeeded tasks.
- celery_worker_up{worker}: 1 while the node sends heartbeats, 0 once it went offline or missed
  them; celery_worker_tasks_active{worker}: the tasks it ran at its last heartbeat;
  celery_worker_tasks_received_total{worker}: the tasks it took off its queues.
- celery_queue_length{queue}: messages waiting, every INTERVAL seconds, for the configured
  queues and every queue a node was seen consuming (remembered in STATE_DIR across restarts,
  so a queue whose every consumer died is still measured).
- celery_beat_last_run_timestamp_seconds: when beat last sent its heartbeat entry (a task whose
  arguments hold BEAT_MARKER, seen in its task-sent event; the exporter's start counts as one).

Which nodes should run comes from the inventory, not from here: each worker host's node exporter
publishes celery_worker_node_info{worker,queue} (celery_worker), and the alert rules join the two.
"""

import collections
import json
import os
import sys
import threading
import time

from celery.app.utils import find_app
from prometheus_client import Counter, Gauge, Histogram, start_http_server

TASKS = Counter("celery_tasks", "Task events by task name and kind.", ["task", "state"])
RUNTIME = Histogram("celery_task_runtime_seconds", "Runtime of succeeded tasks.", ["task"],
                    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
WORKER_UP = Gauge("celery_worker_up", "1 while the node sends heartbeats, 0 after it went offline or missed them.",
                  ["worker"])
ACTIVE = Gauge("celery_worker_tasks_active", "Tasks the node ran at its last heartbeat.", ["worker"])
RECEIVED = Counter("celery_worker_tasks_received", "Tasks the node took off its queues.", ["worker"])
QUEUE = Gauge("celery_queue_length", "Messages waiting in the queue.", ["queue"])
BEAT = Gauge("celery_beat_last_run_timestamp_seconds", "When beat last sent its heartbeat entry.")
UP = Gauge("celery_exporter_broker_up", "1 when the exporter's last read of the broker worked.")

STATES = {"task-succeeded": "succeeded", "task-failed": "failed", "task-retried": "retried",
          "task-rejected": "rejected", "task-revoked": "revoked", "task-received": "received"}
# A worker that sent no heartbeat for this many of its intervals is down (Celery's own rule).
MISSED = 3


class Exporter:
    def __init__(self, app, config):
        self.app = app
        self.beat_marker = config.get("beat_marker") or ""
        self.interval = float(config.get("interval", 15))
        self.state_file = os.path.join(config["state_dir"], "queues.json")
        self.queues = set(config.get("queues") or []) | self._remembered()
        self.names = collections.OrderedDict()  # task id -> name, from task-received/task-sent
        self.workers = {}  # node -> (last heartbeat, its interval)
        self.lock = threading.Lock()
        BEAT.set(time.time())

    def _remembered(self):
        try:
            with open(self.state_file) as f:
                return set(json.load(f))
        except (OSError, ValueError):
            return set()

    def _remember(self, queues):
        new = set(queues) - self.queues
        if not new:
            return
        self.queues |= new
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(sorted(self.queues), f)
        os.replace(tmp, self.state_file)

    def _name(self, event):
        uuid = event.get("uuid")
        name = event.get("name")
        if name:
            self.names[uuid] = name
            if len(self.names) > 100000:
                self.names.popitem(last=False)
            return name
        return self.names.get(uuid, "unknown")

    def on_event(self, event):
        kind = event.get("type", "")
        if kind.startswith("worker-"):
            self.on_worker(event)
            return
        name = self._name(event)
        if kind == "task-sent":
            if self.beat_marker and self.beat_marker in (event.get("args") or ""):
                BEAT.set(event.get("timestamp") or time.time())
            return
        state = STATES.get(kind)
        if state is None:
            return
        TASKS.labels(name, state).inc()
        if kind == "task-received":
            RECEIVED.labels(event.get("hostname", "unknown")).inc()
        elif kind == "task-succeeded" and event.get("runtime") is not None:
            RUNTIME.labels(name).observe(float(event["runtime"]))
        if kind in ("task-succeeded", "task-failed", "task-rejected", "task-revoked"):
            self.names.pop(event.get("uuid"), None)

    def on_worker(self, event):
        node = event.get("hostname")
        if not node:
            return
        with self.lock:
            if event["type"] == "worker-offline":
                self.workers.pop(node, None)
                WORKER_UP.labels(node).set(0)
                ACTIVE.labels(node).set(0)
                return
            self.workers[node] = (time.monotonic(), float(event.get("freq") or 2.0))
        WORKER_UP.labels(node).set(1)
        ACTIVE.labels(node).set(event.get("active") or 0)
        RECEIVED.labels(node)  # a node that has received nothing yet shows 0

    def expire_workers(self):
        now = time.monotonic()
        with self.lock:
            for node, (seen, freq) in list(self.workers.items()):
                if now - seen > MISSED * freq:
                    del self.workers[node]
                    WORKER_UP.labels(node).set(0)

    def listen(self):
        """Consume the cluster's events, reconnecting until the process ends."""
        while True:
            try:
                with self.app.connection_for_read() as conn:
                    receiver = self.app.events.Receiver(conn, handlers={"*": self.on_event})
                    receiver.capture(limit=None, timeout=None, wakeup=True)
            except Exception as exc:  # the broker went away: connect again
                print("celery-exporter: events: %s; reconnecting" % exc, file=sys.stderr, flush=True)
                time.sleep(2)

    def measure(self):
        """Queue lengths, the queues the nodes consume, and workers that stopped sending heartbeats."""
        self.expire_workers()
        replies = self.app.control.inspect(timeout=2).active_queues() or {}
        self._remember(q["name"] for queues in replies.values() for q in queues or []
                       if not q["name"].endswith(".dq2"))
        with self.app.connection_for_read() as conn:
            for queue in sorted(self.queues):
                channel = conn.channel()
                try:
                    QUEUE.labels(queue).set(channel.queue_declare(queue=queue, passive=True).message_count)
                except conn.channel_errors:
                    QUEUE.labels(queue).set(0)  # not declared yet (Redis: no message ever waited)
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass

    def poll(self):
        while True:
            try:
                self.measure()
                UP.set(1)
            except Exception as exc:
                UP.set(0)
                print("celery-exporter: broker: %s" % exc, file=sys.stderr, flush=True)
            time.sleep(self.interval)


def main(argv):
    app_name, config_file = argv
    with open(config_file) as f:
        config = json.load(f)
    app = find_app(app_name)
    exporter = Exporter(app, config)
    start_http_server(int(config["port"]), addr=config["address"])
    threading.Thread(target=exporter.listen, name="events", daemon=True).start()
    print("celery-exporter: serving http://%s:%s/metrics" % (config["address"], config["port"]), flush=True)
    exporter.poll()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
