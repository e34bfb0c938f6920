"""Sample tasks that exercise what a deployment must get right, and the task features of the
notes the kit was asked from: a chord and a chain through the result backend, a rate limit,
countdown and expires (sent by ./kit smoke), and a signal handler."""

import logging
import os
import socket
import time

from celery.signals import task_failure

from .celery import app

logger = logging.getLogger(__name__)


@task_failure.connect
def log_failure(sender=None, task_id=None, exception=None, **kwargs):
    """A signal handler: every failed task is logged with its name, id and exception."""
    logger.error("task %s[%s] failed: %r", getattr(sender, "name", sender), task_id, exception)


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    """A chord's callback: the sum of its header's results."""
    return sum(numbers)


@app.task(rate_limit="30/m")
def limited(n):
    """At most 30 a minute on each worker node (rate_limit)."""
    return n


@app.task
def fail(message):
    """Fails on purpose: the task_failure handler above logs it."""
    raise RuntimeError(message)


@app.task
def urgent(value):
    """Routed to the hipri queue (task_routes); reports which worker host consumed it."""
    return {"value": value, "host": socket.gethostname()}


@app.task(bind=True)
def whoami(self):
    """Reports the node that ran it: shows which nodes consume a queue."""
    return self.request.hostname


@app.task
def heartbeat(name="heartbeat"):
    """Run by beat: leaves the time of its last run in the state directory, in a file called
    `name` (letters, digits, '-' and '_')."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError("heartbeat name %r" % name)
    now = time.time()
    path = os.path.join(app.conf.get("kit_state_dir", "/var/lib/celery"), name)
    # A temporary file of its own: after a broker restart the same run may be delivered twice,
    # and two pool processes of one host may then write at once.
    temporary = "%s.%d.tmp" % (path, os.getpid())
    with open(temporary, "w") as handle:
        handle.write("%f %s\n" % (now, socket.gethostname()))
    os.replace(temporary, path)
    return now


@app.task(bind=True, max_retries=5, default_retry_delay=0.2)
def flaky(self, failures):
    """Fails its first `failures` runs, then succeeds: returns how many retries it took."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError("planned failure %d" % self.request.retries))
    return self.request.retries


@app.task(bind=True)
def record(self, n, seconds=0.0):
    """Sleeps `seconds`, then appends "n node" to records/<node>.log in the state directory:
    a test counts the runs of every n across hosts (a task run twice has two lines)."""
    time.sleep(seconds)
    folder = os.path.join(app.conf.get("kit_state_dir", "/var/lib/celery"), "records")
    os.makedirs(folder, exist_ok=True)
    line = "%d %s\n" % (int(n), self.request.hostname)
    fd = os.open(os.path.join(folder, "%s.log" % self.request.hostname.split("@")[0]),
                 os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return int(n)
