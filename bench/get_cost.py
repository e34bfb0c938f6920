"""How long AsyncResult.get() takes, with the Redis result backend, for results that came while
the client waited on an earlier one, against collecting the same results as one ResultSet
(celery/celery#4733). Runs a client on the restart scenario's first worker host:

    MOLECULE_DEBIAN_VERSION=12 molecule create -s restart && molecule converge -s restart
    python bench/get_cost.py [--tasks 40]
    molecule destroy -s restart
"""

import argparse
import json
import subprocess

CLIENT = r'''
import json, time
from celery.result import ResultSet
from proj.tasks import record
N = %d

def load():
    # record(n, 8) sleeps 8 s; the N after it take no time and finish first.
    return record.delay(900000, 8), [record.delay(900000 + n, 0) for n in range(1, N + 1)]

slow, fast = load()
slow.get(timeout=60)
each = []
for result in fast:
    started = time.time()
    result.get(timeout=60)
    each.append(round(time.time() - started, 2))
slow, fast = load()
started = time.time()
ResultSet([slow] + fast).get(timeout=60)
print(json.dumps({"get_each": each, "get_sum": round(sum(each), 1),
                  "resultset_after_slow": round(max(0.0, time.time() - started - 8), 1)}))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--version", default="12", help="the scenario's Debian version (container names)")
    args = parser.parse_args()
    code = CLIENT % args.tasks
    out = subprocess.run(
        ["docker", "exec", "celery-rst-worker1-d%s" % args.version, "sh", "-c",
         "cd /opt/celery/current/app && runuser -u celery -- /bin/sh -c 'set -a; . /etc/celery-kit/environment; "
         "set +a; exec /opt/celery/current/venv/bin/python -c \"$0\"' '%s'" % code.replace("'", "'\\''")],
        capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print("%d results that came while the client waited on a slow task: get() one by one took %.1f s "
          "(each %s s); as one ResultSet, %.1f s beyond the slow task"
          % (args.tasks, report["get_sum"], sorted(set(report["get_each"])), report["resultset_after_slow"]))


if __name__ == "__main__":
    main()
