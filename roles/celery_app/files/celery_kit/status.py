"""Ask every worker node, through the broker, what it is doing; print one JSON object. Run as
`python -m celery_kit.status APP` on a worker host, with the kit's environment file loaded
(playbooks/status.yml)."""

import json
import sys

from celery.app.utils import find_app

app = find_app(sys.argv[1])  # the value of CELERY_APP
inspect = app.control.inspect(timeout=5)
replies = {
    "ping": inspect.ping() or {},
    "active": inspect.active() or {},
    "reserved": inspect.reserved() or {},
    "stats": inspect.stats() or {},
}
nodes = {}
for name in set().union(*replies.values()):
    stats = replies["stats"].get(name, {})
    pool = stats.get("pool", {})
    nodes[name] = {
        "ping": "pong" if name in replies["ping"] else "no reply",
        "active": len(replies["active"].get(name, [])),
        "reserved": len(replies["reserved"].get(name, [])),
        # A prefork pool's processes, which pool_grow and pool_shrink change; other pools
        # report their size as max-concurrency.
        "pool": len(pool["processes"]) if "processes" in pool else pool.get("max-concurrency", "?"),
    }
print(json.dumps(nodes))
