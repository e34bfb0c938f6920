"""Give running worker nodes a new pool size without a restart, run with the app's Python as
the celery user in the app directory, with the kit's environment file loaded (celery_worker's
tasks/systemd.yml):

    python -m celery_kit.resize APP '[{"name": "worker1@%h", "concurrency": 4}, ...]'

A concurrency of null (or empty) is the size a node started without --concurrency has: the app's
worker_concurrency, or else one process per CPU (billiard's cpu_count, as the worker counts).

For each node it reads the pool's processes (`inspect stats`) and sends `pool_grow` or
`pool_shrink` for the difference; Celery adjusts the node's prefetch count with it. A shrink
stops idle pool processes only, one at a time: while every process is busy it is tried again
every half second, for up to WAIT seconds. Prints JSON, by the node names given:
{"resized": {node: [old, new]}, "failed": {node: reason}}. A failed node keeps running with its old pool size; the kit
restarts it (a warm shutdown) instead. Exits 0 unless the broker cannot be reached.

New processes start with the pool's next maintenance round (at most 5 s later); `inspect
stats` shows them from then on. Its "max-concurrency" keeps the size the node started with.
"""

import json
import sys
import time

from billiard import cpu_count
from celery.app.utils import find_app
from celery.utils.nodenames import host_format

app = find_app(sys.argv[1])
want, given = {}, {}
for node in json.loads(sys.argv[2]):
    name = host_format(node["name"] if "@" in node["name"] else node["name"] + "@%h")
    size = node["concurrency"] or app.conf.worker_concurrency or cpu_count()
    want[name], given[name] = int(size), node["name"]
WAIT = 10


def sizes():
    stats = app.control.inspect(destination=sorted(want), timeout=3).stats() or {}
    return {name: len(s.get("pool", {}).get("processes", [])) for name, s in stats.items()}


def reply_error(replies):
    for reply in replies or [{}]:
        for answer in reply.values():
            if "ok" in answer:
                return None
            return answer.get("error", str(answer))
    return "no reply"


resized, failed = {}, {}
before = sizes()
for name, size in sorted(want.items()):
    old = before.get(name)
    if old is None:
        failed[given[name]] = "does not answer inspect stats"
        continue
    if old == size:
        continue
    if size > old:
        error = reply_error(app.control.pool_grow(size - old, destination=[name], reply=True, timeout=3))
    else:
        deadline = time.monotonic() + WAIT
        left = old - size
        error = None
        while left:
            error = reply_error(app.control.pool_shrink(1, destination=[name], reply=True, timeout=3))
            if error is None:
                left -= 1
            elif time.monotonic() > deadline:
                break
            else:
                time.sleep(0.5)
    if error:
        failed[given[name]] = "%s (pool of %d, asked for %d)" % (error, old, size)
    else:
        resized[given[name]] = [old, size]
print(json.dumps({"resized": resized, "failed": failed}))
