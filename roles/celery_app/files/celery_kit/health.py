"""Health check of worker nodes after a restart, run with the app's Python as the celery user
in the app directory, with the kit's environment file loaded (tasks/health.yml of celery_worker):

    python -m celery_kit.health APP '[{"name": "worker1@%h", "queues": ["celery"]}, ...]'

Exits 0 when every node answers `inspect ping` and consumes exactly its queues
(`inspect active_queues`; besides its own worker_direct queue, NAME.dq2, which the watchdog
probes); otherwise prints what is missing and exits 1.

A node restarted a moment ago takes a few seconds to boot, so the nodes that have not answered
are pinged again every half second, for up to WAIT seconds, before the verdict: one run of this
script instead of a failed run, the task's retry delay and another Python start.
"""

import json
import sys
import time

from celery.app.utils import find_app
from celery.utils.nodenames import host_format, worker_direct

app = find_app(sys.argv[1])
want = {}
for node in json.loads(sys.argv[2]):
    name = node["name"] if "@" in node["name"] else node["name"] + "@%h"
    want[host_format(name)] = sorted(node["queues"])
WAIT = 10
pongs = {}
deadline = time.monotonic() + WAIT
while True:
    missing = sorted(set(want) - set(pongs))
    # With a destination, the reply wait ends as soon as every node named has answered.
    pongs.update(app.control.inspect(destination=missing, timeout=1).ping() or {})
    if set(want) <= set(pongs) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
queues = {}
if set(want) <= set(pongs):
    queues = app.control.inspect(destination=sorted(want), timeout=3).active_queues() or {}
problems = []
for name, expected in sorted(want.items()):
    got = sorted(q["name"] for q in queues.get(name) or [] if q["name"] != worker_direct(name).name)
    if name not in pongs:
        problems.append("%s does not answer ping" % name)
    elif got != expected:
        problems.append("%s consumes %s, not %s" % (name, got, expected))
print(json.dumps({"nodes": sorted(want), "problems": problems}))
sys.exit(1 if problems else 0)
