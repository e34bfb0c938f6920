"""Sample tasks that exercise what a deployment must get right."""

import os
import socket
import time

from .celery import app


@app.task
def add(x, y):
    return x + y


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
