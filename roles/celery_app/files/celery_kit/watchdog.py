"""Watchdog of one worker node, run by celery-watchdog@<node>.service (its timer starts it every
celery_worker_watchdog_interval seconds; celery_worker) as the celery user, with the app's
Python in the app directory and the kit's environment file loaded:

    python -m celery_kit.watchdog APP NODES_FILE NODE STATE_DIR FAILURES TIMEOUT

NODES_FILE is the host's JSON of its nodes ({"worker1": {"name": "worker1@%h", "queues": [...]}}).
The node must answer ping, consume each of its queues, and take a probe sent to the queue only
it reads (its worker_direct queue, NAME.dq2) off that queue within TIMEOUT seconds: a node that
answers ping but stopped consuming after a lost broker connection (celery#8082, #9054) fails
here. A node whose pool runs as many tasks as it has processes is busy, not stuck: its prefetch
window can be full, and a probe it has not taken yet is not held against it. The probe is
celery.accumulate, which every Celery app has, and expires after TIMEOUT seconds.

Failures in a row are counted in STATE_DIR/NODE; at the FAILURES-th the reason goes to the
journal and the exit status is 3, on which celery-kit-watchdog restarts the node (a warm
shutdown, then a start). Otherwise it exits 0, and a passed check resets the count. A check
that cannot reach the broker is not counted: restarting every node would not bring it back.
"""

import json
import os
import sys
import time
import uuid

from celery.app.utils import find_app
from celery.utils.nodenames import host_format
from kombu.exceptions import OperationalError

from celery_kit.quorum import direct_queue

RESTART = 3


def check(app, name, queues, timeout):
    """The reason the node fails the check, or None."""
    inspect = app.control.inspect(destination=[name], timeout=3)
    if name not in (inspect.ping() or {}):
        return "does not answer ping"
    direct = direct_queue(app, name)
    consumed = {q["name"] for q in (inspect.active_queues() or {}).get(name) or []}
    missing = sorted(set(queues) - consumed)
    if missing:
        return "answers ping but does not consume %s" % ", ".join(missing)
    if direct.name not in consumed:
        return "answers ping but does not consume its own queue %s" % direct.name
    app.send_task("celery.accumulate", args=["watchdog-" + uuid.uuid4().hex], exchange=direct.exchange,
                  routing_key=direct.routing_key, expires=timeout, ignore_result=True)
    deadline = time.monotonic() + timeout
    with app.connection_for_read() as conn:
        queue = direct(conn.default_channel)  # declared as the node declares it: Redis has no empty list
        while True:
            if queue.queue_declare().message_count == 0:
                return None
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    stats = (inspect.stats() or {}).get(name) or {}
    processes = (stats.get("pool") or {}).get("max-concurrency") or 0
    active = (inspect.active() or {}).get(name)
    if active is not None and processes and len(active) >= processes:
        return None  # busy: every process runs a task
    return ("answers ping and consumes its queues, but left a probe on %s for %d s with %s of %s processes busy"
            % (direct.name, timeout, "?" if active is None else len(active), processes or "?"))


def main(argv):
    app_name, nodes_file, node, state_dir, failures, timeout = argv
    with open(nodes_file) as f:
        spec = json.load(f)[node]
    name = host_format(spec["name"] if "@" in spec["name"] else spec["name"] + "@%h")
    app = find_app(app_name)
    try:
        reason = check(app, name, sorted(spec["queues"]), float(timeout))
    except (OperationalError,) + tuple(app.connection_for_read().connection_errors) as exc:
        # Not the node's failure: a broker outage is not fixed by restarting every node.
        print("%s not checked: the broker cannot be reached (%s); not counted" % (name, exc), file=sys.stderr)
        return 0
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    state = os.path.join(state_dir, node)
    if reason is None:
        if os.path.exists(state):
            os.unlink(state)
        return 0
    try:
        with open(state) as f:
            count = int(f.read().strip() or 0) + 1
    except (OSError, ValueError):
        count = 1
    if count >= int(failures):
        if os.path.exists(state):
            os.unlink(state)
        print("%s %s, %d checks in a row: restarting it" % (name, reason, count), file=sys.stderr)
        return RESTART
    with open(state, "w") as f:
        f.write("%d\n" % count)
    print("%s %s (check %d of %s before a restart)" % (name, reason, count, failures), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
