"""Counts the tasks a Redis restart under load loses, on the restart scenario's cluster.

Each run sends TASKS record tasks of 0.1 s through the deployed broker (from the first worker
host, as the celery user), restarts Redis with `systemctl restart redis-server` 3 s in, and
waits up to WAIT s for every result. It prints one line per run: results missing, tasks that
never ran (no record on any worker host), tasks run twice; for a lost task, whether it is still
queued or unacknowledged. Each run uses its own task numbers, so that a late duplicate of an
earlier run cannot hide a loss. --busy N keeps N CPUs busy meanwhile, as a CI run's other lane
does. --drain restarts Redis the way playbooks/restart-brokers.yml does: every worker node
stops taking tasks and finishes what it holds first (celery_kit.drain), then consumes again.

    MOLECULE_DEBIAN_VERSION=12 molecule create -s restart && molecule converge -s restart
    python bench/restart_loss.py --runs 60 --busy 2 [--drain]
    molecule destroy -s restart

With kombu's own Redis transport instead of the kit's: converge with
`-- -e celery_app_redis_unacked_retry=0` (the log line names the transport in use).
"""

import argparse
import collections
import json
import multiprocessing
import subprocess
import threading
import time

CLIENT = r'''
import json, sys, time
from proj.celery import app
from proj.tasks import record
first, count, wait = %d, %d, %d
pending = {r.id: n for n, r in ((n, record.delay(n, 0.1)) for n in range(first, first + count))}
deadline = time.time() + wait
while pending and time.time() < deadline:
    for task_id in list(pending):
        try:
            meta = app.backend.get_task_meta(task_id, cache=False)
        except Exception:
            break  # the backend is restarting: ask again
        if meta["status"] in ("SUCCESS", "FAILURE"):
            del pending[task_id]
    time.sleep(1)
print(json.dumps({n: task_id for task_id, n in pending.items()}))
'''


def sh(host, cmd, timeout=600):
    return subprocess.run(["docker", "exec", host, "sh", "-c", cmd], capture_output=True, text=True,
                          timeout=timeout)


def as_celery(host, argv, timeout=600):
    """Runs argv on host as the celery user in the app's directory, with the kit's environment."""
    return sh(host, "cd /opt/celery/current/app && runuser -u celery -- /bin/sh -c 'set -a; "
              ". /etc/celery-kit/environment; set +a; exec \"$@\"' sh %s" % " ".join(
                  "'%s'" % a.replace("'", "'\\''") for a in argv), timeout=timeout)


def drain(host, action):
    """celery_kit.drain on host's nodes (as tasks/drain.yml of celery_worker runs it); its rc."""
    nodes = sh(host, "systemctl list-units --no-legend --plain 'celery-worker@*' | awk '{print $1}'").stdout.split()
    queues = {"celery-worker@worker1.service": ["celery", "hipri"]} if host.startswith("celery-rst-worker1") else {}
    spec = json.dumps([{"name": unit.split("@", 1)[1].rsplit(".", 1)[0] + "@%h",
                        "queues": queues.get(unit, ["celery"])} for unit in nodes])
    for _ in range(15):  # a node answers once it has connected again (tasks/drain.yml asks every 2 s)
        out = as_celery(host, ["/opt/celery/current/venv/bin/python", "-m", "celery_kit.drain", "proj", action,
                               "120", spec], timeout=200)
        if out.returncode == 0 or action == "drain":
            break
        time.sleep(2)
    if out.returncode:
        print("  %s %s: %s %s" % (host, action, out.stdout[-500:], out.stderr[-500:]), flush=True)
    return out.returncode


def busy(seconds):
    end = time.time() + seconds
    while time.time() < end:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--wait", type=int, default=90, help="seconds to wait for the results of a run")
    parser.add_argument("--busy", type=int, default=0, help="CPUs to keep busy meanwhile")
    parser.add_argument("--version", default="12", help="the scenario's Debian version (container names)")
    parser.add_argument("--drain", action="store_true", help="drain the nodes first, as restart-brokers.yml does")
    args = parser.parse_args()
    workers = ["celery-rst-worker1-d%s" % args.version, "celery-rst-worker2-d%s" % args.version]
    broker = "celery-rst-broker-d%s" % args.version
    # The app user's password: in the Redis URL of the workers' settings.
    password = sh(workers[0], "sed -n 's|^broker_url = \"redis://celery:\\([^@]*\\)@.*|\\1|p' "
                  "/opt/celery/kit/celery_kit/config.py").stdout.strip()
    loaders = [multiprocessing.Process(target=busy, args=(24 * 3600,), daemon=True) for _ in range(args.busy)]
    for p in loaders:
        p.start()
    lost_runs = 0
    try:
        for run in range(args.runs):
            first = run * 1000 + 100000
            box = {}
            for host in workers:
                sh(host, "rm -f /var/lib/celery/records/*.log")

            def client():
                code = CLIENT % (first, args.tasks, args.wait)
                out = sh(workers[0], "cd /opt/celery/current/app && runuser -u celery -- /bin/sh -c 'set -a; . /etc/celery-kit/environment; "
         "set +a; exec /opt/celery/current/venv/bin/python -c \"$0\"' '%s'"
                         % code.replace("'", "'\\''"), timeout=args.wait + 120)
                assert out.returncode == 0, out.stderr
                box["missing"] = json.loads(out.stdout.strip().splitlines()[-1])

            sender = threading.Thread(target=client)
            sender.start()
            time.sleep(3)
            started = time.time()
            if args.drain:
                drained = [drain(host, "drain") for host in workers]
                rc = sh(broker, "systemctl restart redis-server").returncode or max(drained)
                rc = rc or max(drain(host, "resume") for host in workers)
            else:
                rc = sh(broker, "systemctl restart redis-server").returncode
            took = time.time() - started
            sender.join()
            counts = collections.Counter()
            for host in workers:
                for line in sh(host, "cat /var/lib/celery/records/*.log 2>/dev/null").stdout.splitlines():
                    counts[int(line.split()[0])] += 1
            numbers = range(first, first + args.tasks)
            never = [n for n in numbers if counts[n] == 0]
            twice = [n for n in numbers if counts[n] > 1]
            missing = box["missing"]
            print("%s run %d: restart rc=%d in %.2f s; results missing %d, never ran %d %s, ran twice %d"
                  % (time.strftime("%H:%M:%S"), run, rc, took, len(missing), len(never), never[:5], len(twice)),
                  flush=True)
            if missing or never:
                lost_runs += 1
                unacked = sh(broker, "REDISCLI_AUTH='%s' redis-cli --user celery hgetall unacked" % password.replace("'", "'\\''")).stdout
                queued = sh(broker, "REDISCLI_AUTH='%s' redis-cli --user celery lrange celery 0 -1" % password.replace("'", "'\\''")).stdout
                for n, task_id in list(missing.items())[:3]:
                    print("  task %s (%s): queued %s, unacknowledged %s"
                          % (n, task_id, task_id in queued, task_id in unacked), flush=True)
    finally:
        for p in loaders:
            p.terminate()
    print("runs that lost a task: %d of %d" % (lost_runs, args.runs))


if __name__ == "__main__":
    main()
