"""celery control for playbooks/control.yml, run with the app's Python as the celery user, with
the kit's environment file loaded:

    python -m celery_kit.control APP ACTION N QUEUE '["node@host", ...]' '[{"name": "worker1@%h", ...}, ...]'

The command goes to the chosen nodes (or, with none chosen, to this host's nodes) and needs a
reply from each; prints the replies as JSON and exits 1 when a node did not reply or refused.
"""

import json
import sys

from celery.app.utils import find_app
from celery.utils.nodenames import host_format

app = find_app(sys.argv[1])
action, n, queue = sys.argv[2], int(sys.argv[3]), sys.argv[4]
chosen = json.loads(sys.argv[5])
nodes = chosen or [host_format(node["name"] if "@" in node["name"] else node["name"] + "@%h")
                   for node in json.loads(sys.argv[6])]
control = app.control
kwargs = {"destination": nodes, "reply": True, "timeout": 5}
if action == "events_on":
    replies = control.enable_events(**kwargs)
elif action == "events_off":
    replies = control.disable_events(**kwargs)
elif action == "pool_grow":
    replies = control.pool_grow(n, **kwargs)
elif action == "pool_shrink":
    replies = control.pool_shrink(n, **kwargs)
elif action == "add_consumer":
    replies = control.add_consumer(queue, **kwargs)
elif action == "cancel_consumer":
    replies = control.cancel_consumer(queue, **kwargs)
else:
    sys.exit("unknown action %r" % action)
got = {}
for reply in replies or []:
    got.update(reply)
missing = sorted(set(nodes) - set(got))
refused = sorted(k for k, v in got.items() if isinstance(v, dict) and "error" in v)
print(json.dumps({"action": action, "replies": got, "no_reply": missing, "refused": refused}))
sys.exit(1 if missing or refused else 0)
