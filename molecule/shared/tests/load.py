"""Loads of record tasks sent through the deployed broker while a test restarts or kills parts
of the cluster, and the report of what became of each task (shared by the scenarios that
restart things under load: restart, redis-sentinel)."""

import calendar
import collections
import shlex
import threading
import time

from kit_verify import host_of, hosts_in, inventory_vars, playbook, run_client

WORKERS = hosts_in("celery_workers")
BROKER = hosts_in("brokers")[0]
# redis-cli's options on the broker host, with TLS: the CA redis_broker writes there.
CLI_TLS = "--tls --cacert /etc/redis-tls/ca.crt " if inventory_vars(BROKER).get("redis_broker_tls") else ""


def records():
    """n -> number of times a task recorded it, over every worker host."""
    counts = collections.Counter()
    for name in WORKERS:
        out = host_of(name).run("cat /var/lib/celery/records/*.log 2>/dev/null")
        for line in out.stdout.splitlines():
            counts[int(line.split()[0])] += 1
    return counts


def clear_records():
    for name in WORKERS:
        host_of(name).run("rm -f /var/lib/celery/records/*.log")


# The client a test sends its load with, run on a worker host as the celery user. It sends
# record(n) for n in [first, first + count) and collects the results as one ResultSet, the way
# the README tells clients to wait for many results: AsyncResult.get() in a loop pays up to 1 s
# for each result that came while it waited on an earlier one (celery/celery#4733), which once
# took this client past its time limit (a database backend has no native join: it is polled). The wait is bounded by progress: it ends STALL seconds
# after the last result came, so one lost result ends it with its number in STALL seconds. A
# broken connection to Redis (a broker restart) is asked again. It prints the task ids of the
# results that never came and of the tasks that failed, the waits that ran more than 10 s past
# their timeout, and how long it waited; while a wait runs long, its stack goes to stderr.
LOAD_CLIENT = r"""
import faulthandler, json, sys, time
import celery.exceptions
import kombu.exceptions
import redis.exceptions
from celery.result import ResultSet
from proj.tasks import record
first, count, seconds, stall = %d, %d, %r, %d
started = time.time()
sent = {n: record.delay(n, seconds) for n in range(first, first + count)}
results = ResultSet(list(sent.values()))
done, last, overran = 0, time.time(), []
while True:
    budget = max(1.0, last + stall - time.time())
    asked = time.time()
    faulthandler.dump_traceback_later(budget + 15, repeat=True, file=sys.stderr)
    try:
        if results.supports_native_join:
            results.join_native(timeout=budget, propagate=False)
        else:  # a database backend: each result is polled
            results.join(timeout=budget, propagate=False, interval=0.2)
        break
    except celery.exceptions.TimeoutError:
        pass
    except (redis.exceptions.ConnectionError, ConnectionError, kombu.exceptions.OperationalError):
        time.sleep(1)  # the broker restarts: ask again
    finally:
        faulthandler.cancel_dump_traceback_later()
        if time.time() - asked > budget + 10:
            overran.append({"at": time.strftime("%%H:%%M:%%S", time.gmtime(asked)), "timeout": round(budget, 1),
                            "seconds": round(time.time() - asked, 1)})
    now = sum(1 for result in sent.values() if result.ready())
    if now > done:
        done, last = now, time.time()
    elif time.time() >= last + stall:
        break
missing = {n: result.id for n, result in sent.items() if not result.ready()}
failed = {n: "%%s: %%r" %% (result.id, result.result) for n, result in sent.items()
          if n not in missing and result.failed()}
print(json.dumps({"missing": missing, "failed": failed, "overran": overran,
                  "seconds": round(time.time() - started, 1)}))
"""

STALL = 90  # seconds: more than the scenario's visibility timeout (30) and a redelivered task


class Load:
    """One load of record tasks, sent from the first worker host in a thread of its own. When a
    result is missing or the client fails, explain() tells what became of each missing task."""

    def __init__(self, first, count, seconds):
        self.first, self.count, self.seconds = first, count, seconds
        self.outcome, self.error = None, None
        self.started = time.time()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self):
        limit = int(self.count * self.seconds) + STALL * 3 + 60
        try:
            self.outcome = run_client(host_of(WORKERS[0]), LOAD_CLIENT % (
                self.first, self.count, self.seconds, STALL), timeout=limit)
        except AssertionError as exc:  # the client failed or ran out of time
            self.error = str(exc)

    def wait(self):
        """Joins the client, then returns the report: task numbers missing (never ran, or ran with
        no result), failed, and run twice."""
        self.thread.join()
        counts = records()
        numbers = range(self.first, self.first + self.count)
        missing = (self.outcome or {}).get("missing", {})
        report = {
            "client_error": self.error,
            "never_ran": [n for n in numbers if counts[n] == 0],
            "ran_without_result": sorted(int(n) for n in missing if counts[int(n)] > 0),
            "failed": (self.outcome or {}).get("failed", {}),
            # A wait for results that went on well past its timeout.
            "overran": (self.outcome or {}).get("overran", []),
            "twice": [n for n in numbers if counts[n] > 1],
            "client_seconds": (self.outcome or {}).get("seconds"),
        }
        report["ok"] = not (report["client_error"] or report["never_ran"] or report["ran_without_result"]
                            or report["failed"] or report["overran"])
        if not report["ok"]:
            report["explanation"] = self.explain(report, missing)
        return report

    def explain(self, report, missing):
        """Where the missing tasks are on the broker (queued, unacknowledged, result stored), the
        broker's queue lengths, and the workers' Celery log lines since the load started."""
        missing = dict(sorted(missing.items(), key=lambda item: int(item[0])))
        lines = ["client: %s" % (report["client_error"] or "returned"),
                 "missing results (%d): %s" % (len(missing), dict(list(missing.items())[:10]))]
        broker = host_of(BROKER)
        if inventory_vars(BROKER).get("celery_broker") == "rabbitmq":
            lines.append(broker.run("HOME=/var/lib/rabbitmq PATH=/usr/lib/rabbitmq/bin:$PATH rabbitmqctl list_queues "
                                    "-p celery name type messages_ready messages_unacknowledged leader").stdout)
        else:
            self.explain_redis(broker, lines, missing)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.started - 5))
        ids = "|".join(list(missing.values())[:10]) or "^$"
        for name in WORKERS:
            # Celery's log lines start with "[YYYY-mm-dd HH:MM:SS,ms: LEVEL/..." (UTC on these hosts);
            # a traceback's lines go with the line before them.
            out = host_of(name).run(
                "journalctl --no-pager -o short-precise --since '%s UTC' -u 'celery-worker@*' | tail -n 40; "
                "cat /var/log/celery/*.log | awk -v since='[%s' '/^\\[/ {keep = ($0 >= since)} keep' "
                "| grep -E '%s|WARNING|ERROR|CRITICAL|^ ' | tail -n 60" % (since, since, ids))
            lines.append("== %s: journal since %s UTC, then its Celery log (missing ids, warnings, errors)\n%s"
                         % (name, since, out.stdout))
        return "\n".join(lines)

    @staticmethod
    def explain_redis(broker, lines, missing):
        """Redis: its queue lengths, and where each of the first 10 missing tasks is."""
        auth = "REDISCLI_AUTH=%s redis-cli %s--user celery" % (
            shlex.quote(inventory_vars(BROKER)["vault_redis_broker_password"]), CLI_TLS)
        lines.append(broker.run(
            "%s llen celery; %s llen hipri; %s hlen unacked; %s zcard unacked_index"
            % (auth, auth, auth, auth)).stdout.replace("\n", " ").join(["broker llen celery, llen hipri, hlen unacked, "
                                                                          "zcard unacked_index: ", ""]))
        for n, task_id in list(missing.items())[:10]:
            where = broker.run(
                "%s lrange celery 0 -1 | grep -c %s; %s hvals unacked | grep -c %s; %s -n 1 exists celery-task-meta-%s"
                % (auth, task_id, auth, task_id, auth, task_id)).stdout.split()
            lines.append("task %s (%s): queued %s, unacknowledged %s, result stored %s"
                         % (n, task_id, *(where + ["?"] * 3)[:3]))


def finished_at(name, since):
    """When each record task that a worker host finished from `since` (a time.time()) on ended:
    the "succeeded" lines of its Celery logs (INFO, UTC, to the millisecond). Read from the logs,
    not by sampling the hosts, whose `docker exec` stalls while the engine kills a container."""
    stamps = []
    out = host_of(name).run("cat /var/log/celery/*.log | grep -a 'proj.tasks.record.*succeeded in' | cut -c2-24")
    for line in out.stdout.splitlines():
        try:
            stamp = calendar.timegm(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
        except ValueError:
            continue
        if stamp >= since:
            stamps.append(stamp)
    return sorted(stamps)


def longest_stop(since, hosts=None):
    """The longest stretch from `since` on in which none of the worker hosts (or of HOSTS)
    finished a record task: how long tasks stopped flowing."""
    stamps = sorted(t for name in hosts or WORKERS for t in finished_at(name, since))
    return round(max((b - a for a, b in zip([since] + stamps, stamps)), default=0.0), 1)


def send(first, count, seconds):
    """Sends a load and waits for it; returns the report (Load.wait)."""
    return Load(first, count, seconds).wait()


def explained(report):
    """A failed load's report, its explanation last."""
    return "\n".join(["%s: %s" % (k, str(v)[:400]) for k, v in report.items() if k != "explanation"]
                     + [report.get("explanation", "")])


def restart_brokers_under_load(what):
    """playbooks/restart-brokers.yml while 200 tasks of 0.5 s are in flight (numbers of their own:
    a task of an earlier test that Redis hands out again after the visibility timeout must not
    count here): every task completes, once. Prints the time it took; returns its output."""
    clear_records()
    load = Load(20000, 200, 0.5)
    time.sleep(3)
    started = time.time()
    proc = playbook("playbooks/restart-brokers.yml")
    seconds = time.time() - started
    report = load.wait()
    print("restart-brokers.yml %s took %.1f s; %d of 200 tasks ran more than once; client waited %s s"
          % (what, seconds, len(report["twice"]), report["client_seconds"]))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert report["ok"], explained(report)
    assert report["twice"] == [], explained(report)
    return proc
