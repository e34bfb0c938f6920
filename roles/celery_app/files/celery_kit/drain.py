"""Drain and resume worker nodes around a broker restart (playbooks/restart-brokers.yml), run
with the app's Python as the celery user in the app directory, with the kit's environment file
loaded (tasks/drain.yml of celery_worker):

    python -m celery_kit.drain APP drain SECONDS '[{"name": "worker1@%h", "queues": ["celery"]}, ...]'
    python -m celery_kit.drain APP resume 0 '[...]'

drain: every node stops consuming each of its queues (cancel_consumer), then the nodes are asked
every half second for the tasks they run or hold (inspect active and reserved) until each node
answers with none; exits 1, naming them, when some are left after SECONDS. A drained node holds
no message that Redis could lose as it restarts, and starts none. Tasks with an ETA or countdown
wait in the broker's own records (Redis's unacked hash), not in a hand-over, and are not waited for.
resume: every node consumes its queues again (add_consumer); a node that already does says so
and is not an error.
Prints what it did as JSON.
"""

import json
import sys
import time

from celery.app.utils import find_app
from celery.utils.nodenames import host_format

app = find_app(sys.argv[1])
action, seconds = sys.argv[2], float(sys.argv[3])
nodes = {}
for node in json.loads(sys.argv[4]):
    name = node["name"] if "@" in node["name"] else node["name"] + "@%h"
    nodes[host_format(name)] = sorted(node["queues"])
control = app.control
problems = []
for name, queues in sorted(nodes.items()):
    for queue in queues:
        call = control.cancel_consumer if action == "drain" else control.add_consumer
        replies = call(queue, destination=[name], reply=True, timeout=5) or []
        if not replies:
            problems.append("%s did not answer %s %s" % (name, action, queue))

held = {}
if action == "drain" and not problems:
    deadline = time.monotonic() + seconds
    while True:
        inspect = control.inspect(destination=sorted(nodes), timeout=2)
        held = {name: ["(no reply)"] for name in nodes}  # a node that does not answer is not idle
        for method in (inspect.active, inspect.reserved):
            for name, tasks in (method() or {}).items():
                if held.get(name) == ["(no reply)"]:
                    held[name] = []
                held.setdefault(name, []).extend("%s[%s]" % (t.get("name"), t.get("id")) for t in tasks or [])
        held = {name: tasks for name, tasks in held.items() if tasks}
        if not held or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if held:
        problems.append("after %d s, nodes still run or hold tasks: %s" % (seconds, json.dumps(held)[:1500]))
print(json.dumps({"action": action, "nodes": nodes, "held": held, "problems": problems}))
sys.exit(1 if problems else 0)
