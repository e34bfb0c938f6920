"""The kit's benchmark: how long deploys take and how fast the deployed cluster runs tasks.

    ./kit bench [--runs N] [--only a,b,c,d,e,f,g,h,i,j] [--sizes 1,2,4,8] [--tasks 5000] [--f-runs 7] [--publish]

Hosts are local containers like the sandbox's (same image and container settings, names
celery-bench-*, network celery-bench): a broker, N worker hosts and a beat host, deployed
with the sandbox's settings minus Flower (inventories/sandbox/group_vars, one node per worker
host). The four-host cluster (N = 2) is the one the floor script installs by hand.

  (a) fresh deploy of the four hosts: site.yml on bare containers, until a task sent through
      the deployed broker returns its result
  (b) the floor: the same installs by bench/floor.sh (plain shell, hosts in parallel)
  (c) site.yml again, nothing changed
  (d) site.yml after one host's concurrency changed in its host_vars
  (e) fresh deploys with 1, 2, 4 and 8 worker hosts (N = 2 is (a))
  (f) throughput: --tasks no-op tasks (proj.tasks.add) sent from a worker host, until every
      result is back, through the deployed nodes (the kit's settings) and through plain
      `celery worker` processes with only the broker and result backend set (Celery's
      defaults), on the same hosts; Redis, then RabbitMQ
  (g) a new release: site.yml after a change of the app's code (a copy of the sample with one
      more module), from the edit until every node of the four hosts serves it (the rolling
      restart's health checks passed and every host's `current` names the new release)
  (h) throughput through Redis with TLS (redis_broker_tls, a throwaway CA from
      playbooks/test-ca.yml) against plain TCP: (f)'s run with the kit's settings, --f-runs times
      each, on the four-host cluster
  (i) Redis Sentinel failover, on the hosts of molecule/redis-sentinel (three brokers with TLS
      and ACL users, a worker host with beat; Molecule creates and removes them): with 1,000
      tasks of 0.1 s in flight, the master's container is killed (docker kill); the seconds
      until the sentinels promoted a replica and until tasks flowed again, and the tasks lost,
      failed and run twice, --runs times (each run kills the master of that moment)
  (j) a RabbitMQ cluster, on the hosts of molecule/rabbitmq-cluster (three nodes over TLS, two
      worker hosts, results in PostgreSQL): the throughput of 5,000 no-op tasks through the
      kit's quorum queue with publisher confirms, and through a classic queue (on one node, no
      confirms: what a single node gave) on the same hosts; then, with 1,000 tasks of 0.2 s in
      flight, the container of the queue's leader is killed (docker kill, started again
      60 s later): the seconds tasks stopped flowing (on any worker host, and on the one whose
      connection was to that node), and the tasks lost, failed and run twice

Each figure is the median of --runs runs (--f-runs for (f), whose runs are short), with min
and max; (f) also gives the ratio run by run. A second table gives the CPU seconds of each
fresh deploy and floor, split between the hosts and the controller: where the hosts outnumber
the CPUs, those seconds over the CPUs are the least time the run can take on this machine.
The tables go to stdout and to .cache/bench/results.md, the numbers to
.cache/bench/results.json, the plot of (e) and (f) to .cache/bench/bench.png; --publish puts
them in docs/ (docs/benchmark.md, the page of the latest run). Containers and the network are
removed at the end, also on failure.
"""

import argparse
import configparser
import glob
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, ".cache", "bench")
INVENTORY = os.path.join(OUT, "inventory")
PREFIX = "celery-bench"
NETWORK = "celery-bench"
IMAGE = "celery-kit/debian:12"
# What systemd as PID 1 needs in a container here (README "Test hosts"), as for the sandbox.
CAPS = ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "AUDIT_CONTROL", "SYS_CHROOT", "MKNOD", "SETPCAP",
        "DAC_READ_SEARCH", "SYS_NICE", "IPC_LOCK", "LINUX_IMMUTABLE"]
PASSWORD = secrets.token_hex(16)


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run(argv, **kw):
    kw.setdefault("check", True)
    return subprocess.run(argv, text=True, **kw)


# --- hosts --------------------------------------------------------------------------------

def names(workers):
    return {"broker": "%s-broker" % PREFIX,
            "workers": ["%s-worker%d" % (PREFIX, i) for i in range(1, workers + 1)],
            "beat": "%s-beat" % PREFIX}


def destroy():
    ids = run(["docker", "ps", "-aq", "--filter", "name=^%s-" % PREFIX], capture_output=True).stdout.split()
    if ids:
        run(["docker", "rm", "-f"] + ids, capture_output=True)
    run(["docker", "network", "rm", NETWORK], capture_output=True, check=False)


def create(hosts):
    """Bare containers, as playbooks/sandbox.yml makes them; returns when systemd is up."""
    destroy()
    run(["docker", "network", "create", NETWORK], capture_output=True)
    caps = [a for c in CAPS for a in ("--cap-add", c)]
    procs = [subprocess.Popen(
        ["docker", "run", "-d", "--name", h, "--hostname", h, "--network", NETWORK, "--cgroupns=host",
         "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
         "--security-opt", "seccomp=unconfined", "--stop-signal", "SIGRTMIN+3"] + caps + [IMAGE, "/sbin/init"],
        stdout=subprocess.DEVNULL) for h in hosts]
    if any(p.wait() for p in procs):
        raise SystemExit("bench: docker run failed")
    for h in hosts:
        deadline = time.monotonic() + 90
        while True:  # systemd's bus answers a moment after the container starts
            state = run(["docker", "exec", h, "systemctl", "is-system-running", "--wait"],
                        capture_output=True, check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise SystemExit("bench: systemd on %s is %r" % (h, state))
            time.sleep(0.5)


def write_inventory(workers, broker="redis", concurrency=None, tls_dir=None):
    """The sandbox's group_vars (connection, CA certificates, beat schedule) with this bench's
    hosts and passwords; concurrency: {host: n} written as host_vars; tls_dir: Redis with TLS,
    with the certificates playbooks/test-ca.yml made there."""
    n = names(workers)
    shutil.rmtree(INVENTORY, ignore_errors=True)
    os.makedirs(os.path.join(INVENTORY, "group_vars", "all"))
    os.makedirs(os.path.join(INVENTORY, "host_vars"))
    with open(os.path.join(ROOT, "inventories", "sandbox", "group_vars", "all", "main.yml")) as f:
        group_vars = yaml.safe_load(f)
    # Plain TCP to Redis unless tls_dir. The controller's built releases are the bench's own: a
    # fresh deploy builds its release.
    for name in ("test_ca_dir", "redis_broker_tls_ca"):
        group_vars.pop(name, None)
    if tls_dir:
        group_vars.update(test_ca_dir=tls_dir, redis_broker_tls_ca="{{ lookup('file', test_ca_dir ~ '/ca.crt') }}")
        os.makedirs(os.path.join(INVENTORY, "group_vars", "brokers"))
        with open(os.path.join(INVENTORY, "group_vars", "brokers", "main.yml"), "w") as f:
            yaml.safe_dump({"redis_broker_tls_cert": "{{ lookup('file', test_ca_dir ~ '/' ~ inventory_hostname ~ '.crt') }}",
                            "redis_broker_tls_key": "{{ lookup('file', test_ca_dir ~ '/' ~ inventory_hostname ~ '.key') }}"}, f)
    group_vars.update(celery_broker=broker, redis_broker_password=PASSWORD, rabbitmq_broker_password=PASSWORD,
                      redis_broker_tls=bool(tls_dir),
                      redis_broker_kit_password=PASSWORD + "-kit", redis_broker_exporter_password=PASSWORD + "-exporter",
                      celery_app_build_dir=os.path.join(OUT, "releases"))
    with open(os.path.join(INVENTORY, "group_vars", "all", "main.yml"), "w") as f:
        yaml.safe_dump(group_vars, f)
    for host, value in (concurrency or {}).items():
        with open(os.path.join(INVENTORY, "host_vars", "%s.yml" % host), "w") as f:
            yaml.safe_dump({"celery_worker_concurrency": value}, f)
    hosts = {"all": {"children": {
        "brokers": {"hosts": {n["broker"]: None}},
        "celery_workers": {"hosts": {w: None for w in n["workers"]}},
        "celery_beat": {"hosts": {n["beat"]: None}}}}}
    with open(os.path.join(INVENTORY, "hosts.yml"), "w") as f:
        yaml.safe_dump(hosts, f)
    return n


PLAYBOOK_RUN = itertools.count(1)


def playbook(*args):
    """site.yml (or another playbook) against the bench inventory; seconds it took."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_CACHE_PLUGIN_CONNECTION=os.path.join(OUT, "facts"), ANSIBLE_NOCOLOR="1")
    started = time.monotonic()
    proc = run(["ansible-playbook", "-i", os.path.join(INVENTORY, "hosts.yml")] + list(args),
               cwd=ROOT, env=env, capture_output=True, check=False)
    seconds = time.monotonic() - started
    # Every run's output, numbered: last-playbook.log is the last one.
    os.makedirs(os.path.join(OUT, "playbook-logs"), exist_ok=True)
    for name in ("last-playbook.log", os.path.join("playbook-logs", "%02d.log" % next(PLAYBOOK_RUN))):
        with open(os.path.join(OUT, name), "w") as f:
            f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit("bench: ansible-playbook %s failed:\n%s" % (" ".join(args), proc.stdout[-3000:]))
    return seconds


def client(host, code, timeout=600):
    """Python code run as the celery user with the deployed app importable; its last line."""
    proc = run(["docker", "exec", host, "bash", "-c",
                "cd /opt/celery/current/app && timeout %d runuser -u celery -- /bin/sh -c "
                "'set -a; . /etc/celery-kit/environment; set +a; exec /opt/celery/current/venv/bin/python -c \"$0\"' %s"
                % (timeout, shlex_quote(code))], capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit("bench: client on %s failed:\n%s%s" % (host, proc.stdout[-2000:], proc.stderr[-2000:]))
    return proc.stdout.strip().splitlines()[-1]


def shlex_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def first_task(host):
    got = client(host, "from proj.tasks import add; print(add.delay(2, 3).get(timeout=120))")
    assert got == "5", got


# --- CPU accounting -----------------------------------------------------------------------

def cpu_seconds():
    """(machine, hosts): CPU seconds used so far by the whole machine (/proc/stat, all but
    idle and iowait) and by the containers (Docker's cgroup; None where it cannot be read).
    The difference is the controller: ansible-playbook, its `docker exec` clients, dockerd."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    machine = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    hosts = None
    try:  # cgroup v1, Docker's cgroupfs driver
        with open("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage") as f:
            hosts = int(f.read()) / 1e9
    except OSError:
        # cgroup v2: the cgroupfs driver's one file, or else systemd's one scope per container.
        paths = ["/sys/fs/cgroup/docker/cpu.stat"]
        if not os.path.exists(paths[0]):
            paths = glob.glob("/sys/fs/cgroup/system.slice/docker-*.scope/cpu.stat")
        for path in paths:
            try:
                with open(path) as f:
                    usec = int(dict(line.split() for line in f)["usage_usec"])
            except (OSError, KeyError, ValueError):
                continue
            hosts = (hosts or 0.0) + usec / 1e6
    return machine, hosts


class CPU:
    """CPU seconds used between enter and exit: .machine, .hosts (or None), .controller."""

    def __enter__(self):
        self.start = cpu_seconds()
        return self

    def __exit__(self, *exc):
        end = cpu_seconds()
        self.machine = end[0] - self.start[0]
        self.hosts = None if None in (end[1], self.start[1]) else end[1] - self.start[1]
        self.controller = None if self.hosts is None else self.machine - self.hosts
        return False

    def record(self, into, key):
        """Appends this measure's seconds to into[key] = {"machine": [...], "hosts": [...], ...}."""
        entry = into.setdefault(key, {"machine": [], "hosts": [], "controller": []})
        for k in ("machine", "hosts", "controller"):
            if getattr(self, k) is not None:
                entry[k].append(getattr(self, k))


# --- measurements -------------------------------------------------------------------------

def fresh_deploy(workers, broker="redis", cpu=None):
    """Bare containers -> site.yml -> first task result; seconds (containers not counted).
    cpu: a dict where the CPU seconds this took are recorded (CPU.record), under the size."""
    n = write_inventory(workers, broker)
    create([n["broker"]] + n["workers"] + [n["beat"]])
    shutil.rmtree(os.path.join(OUT, "facts"), ignore_errors=True)
    shutil.rmtree(os.path.join(OUT, "releases"), ignore_errors=True)
    started = time.monotonic()
    with CPU() as used:
        playbook("site.yml")
        first_task(n["workers"][0])
    seconds = time.monotonic() - started
    if cpu is not None:
        used.record(cpu, str(workers))
    return seconds, n


def floor(workers=2, cpu=None):
    n = names(workers)
    create([n["broker"]] + n["workers"] + [n["beat"]])
    with CPU() as used:
        proc = run([os.path.join(ROOT, "bench", "floor.sh"), n["broker"]] + n["workers"][:2] + [n["beat"]]
                   + n["workers"][2:],
                   capture_output=True, check=False,
                   env=dict(os.environ, FLOOR_LOG_DIR=os.path.join(OUT, "floor-logs")))
    if cpu is not None:
        used.record(cpu, str(workers))
    if proc.returncode != 0:
        raise SystemExit("bench: floor.sh failed:\n%s%s" % (proc.stdout[-2000:], proc.stderr[-2000:]))
    return float(re.search(r"floor_seconds=([0-9.]+)", proc.stdout).group(1))


# The results are collected as they come (ResultSet.get: one wait for them all). Waiting on
# each in turn measured the client more than the cluster: with the rpc:// backend (RabbitMQ's),
# a result that arrived while the client waited on an earlier one cost a 1 s wait of its own.
THROUGHPUT = """
import sys, time
from celery.result import ResultSet
from proj.tasks import add
n = %d
started = time.monotonic()
results = ResultSet([add.delay(i, i) for i in range(n)])
assert results.get(timeout=600) == [2 * i for i in range(n)]
print(n / (time.monotonic() - started))
"""

# Celery's defaults: the sample app with only the broker and the result backend of the kit's
# config, run by plain `celery worker` (prefork, one process per CPU, prefetch 4, early ack).
DEFAULTS_SETUP = r"""
set -e
rm -rf /opt/celery/bench && mkdir -p /opt/celery/bench
cp -r /opt/celery/current/app/proj /opt/celery/bench/
cd /opt/celery/current/app
PYTHONPATH=/opt/celery/kit /opt/celery/current/venv/bin/python - <<'EOF'
from celery_kit import config as c
with open("/opt/celery/bench/proj/celeryconfig.py", "w") as f:
    f.write("broker_url = %r\nresult_backend = %r\n" % (c.broker_url, c.result_backend))
EOF
chown -R root:celery /opt/celery/bench && chmod -R g+rX,o-rwx /opt/celery/bench
"""


def throughput(n, tasks, mode):
    """tasks/s through the cluster's worker hosts: mode 'kit' (the deployed nodes) or
    'defaults' (plain workers, the kit's nodes stopped meanwhile)."""
    code = THROUGHPUT % tasks
    if mode == "kit":
        return float(client(n["workers"][0], code))
    for w in n["workers"]:
        run(["docker", "exec", w, "bash", "-c", DEFAULTS_SETUP], capture_output=True)
        run(["docker", "exec", w, "bash", "-c", "systemctl stop 'celery-worker@*'"], capture_output=True)
        run(["docker", "exec", w, "bash", "-c",
             "cd /opt/celery/bench && runuser -u celery -- env CELERY_CONFIG_MODULE=proj.celeryconfig "
             "/opt/celery/current/venv/bin/celery -A proj worker --detach "
             "-n defaults@%h --logfile=/var/log/celery/defaults.log --pidfile=/var/lib/celery/defaults.pid"],
            capture_output=True)
    try:
        # The client uses the defaults config too (/opt/celery/bench first on the path).
        first = n["workers"][0]
        proc = run(["docker", "exec", first, "bash", "-c",
                    "cd /opt/celery/bench && timeout 900 runuser -u celery -- env CELERY_CONFIG_MODULE=proj.celeryconfig "
                    "/opt/celery/current/venv/bin/python -c %s"
                    % shlex_quote(code)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit("bench: defaults client failed:\n%s" % proc.stderr[-2000:])
        return float(proc.stdout.strip().splitlines()[-1])
    finally:
        for w in n["workers"]:
            run(["docker", "exec", w, "bash", "-c",
                 # By its pid file: a detached worker's command line no longer says --detach.
                 "p=$(cat /var/lib/celery/defaults.pid 2>/dev/null) && kill -TERM \"$p\" && "
                 "while kill -0 \"$p\" 2>/dev/null; do sleep 0.5; done; "
                 "systemctl start celery-worker@worker1.service"], capture_output=True)
        first_task(n["workers"][0])


def new_release(n, i):
    """(g): seconds from an edit of the app's code to every node serving the release it makes."""
    app = os.path.join(OUT, "app-release")
    shutil.rmtree(app, ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "roles", "celery_app", "files", "sample"), app)
    with open(os.path.join(app, "proj", "bench_release.py"), "w") as f:
        f.write("RELEASE = %r\n" % "%s-%d" % (PASSWORD[:8], i))
    hosts = n["workers"] + [n["beat"]]
    before = {h: current_release(h) for h in hosts}
    seconds = playbook("site.yml", "-e", json.dumps({"celery_app_source": app}))
    after = {h: current_release(h) for h in hosts}
    if len(set(after.values())) != 1 or set(after.values()) & set(before.values()):
        raise SystemExit("bench: (g) the hosts run %s, before %s" % (after, before))
    log("(g) new release %d: %.1f s" % (i + 1, seconds))
    return seconds


def current_release(host):
    return run(["docker", "exec", host, "readlink", "/opt/celery/current"], capture_output=True).stdout.strip()


def config_strategy():
    """The strategy the kit's ansible.cfg sets (what a plain ansible-playbook run uses)."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "ansible.cfg"))
    return parser.get("defaults", "strategy", fallback="linear")


def summary(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="a,b,c,d,e,f,g,h,i,j")
    p.add_argument("--sizes", default="1,2,4,8")
    p.add_argument("--tasks", type=int, default=5000)
    p.add_argument("--f-runs", type=int, default=7,
                   help="runs of each setting in (f); a run takes seconds, and the machine's "
                        "spells move one run by up to a fifth")
    p.add_argument("--floor-workers", type=int, default=2,
                   help="worker hosts for (b); 2 is the sandbox's shape that (a) is compared with")
    p.add_argument("--publish", action="store_true",
                   help="write the results to docs/benchmark.md, docs/bench-results.json and docs/bench.png")
    args = p.parse_args()
    only = set(args.only.split(","))
    os.makedirs(OUT, exist_ok=True)
    shutil.rmtree(os.path.join(OUT, "playbook-logs"), ignore_errors=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "runs": args.runs, "tasks": args.tasks,
           "machine": "%s, %d CPUs, %s" % (platform.node(), os.cpu_count(), platform.platform(terse=True)),
           "strategy": os.environ.get("ANSIBLE_STRATEGY") or config_strategy()}
    try:
        # Each floor runs just before a fresh deploy of its size, so that the two of a pair
        # see the same spell of the machine (its speed drifts by a third from one quarter of an
        # hour to the next). The floor also runs with the largest size of (e): how much of
        # (e)'s growth the installs themselves show on this machine.
        big = max(int(s) for s in args.sizes.split(","))
        floor_sizes = set()
        if "b" in only:
            floor_sizes.add(args.floor_workers)
            if "e" in only:
                floor_sizes.add(big)
        # Fresh deploys; the four-host size comes last, so that its cluster stays up for (c), (d), (f).
        sizes = [int(s) for s in args.sizes.split(",")] if "e" in only else []
        sizes = [s for s in sizes if s != 2] + ([2] if only & {"a", "c", "d", "e", "f", "g", "h"} else [])
        deployed = set(sizes)
        sizes = sorted(floor_sizes - deployed) + sizes
        deploys, floors, n2 = {}, {}, None
        cpu_deploys, cpu_floors = {}, {}
        for size in sizes:
            floor_runs = args.runs if size in floor_sizes else 0
            deploy_runs = (args.runs if size != 2 or only & {"a", "e"} else 1) if size in deployed else 0
            rounds = max(floor_runs, deploy_runs)
            for i in range(rounds):
                if i < floor_runs:
                    log("(b) floor, %d worker hosts, run %d" % (size, i + 1))
                    floors.setdefault(size, []).append(floor(size, cpu=cpu_floors))
                    log("    %.1f s" % floors[size][-1])
                if i >= rounds - deploy_runs:
                    log("(e) fresh deploy, %d worker host(s), run %d" % (size, i - (rounds - deploy_runs) + 1))
                    seconds, n2 = fresh_deploy(size, cpu=cpu_deploys)
                    deploys.setdefault(str(size), []).append(seconds)
                    log("    %.1f s" % seconds)
        if args.floor_workers in floors:
            res["b"] = summary(floors[args.floor_workers])
            res["floor_workers"] = args.floor_workers
        if big in floors and big != args.floor_workers:
            res["b_big"] = summary(floors[big])
            res["b_big_workers"] = big
        if only & {"a", "e"}:
            res["e"] = {k: summary(v) for k, v in deploys.items()}
            res["a"] = res["e"]["2"]
        # CPU seconds of each deploy and floor: on a machine with fewer CPUs than hosts, the
        # least wall time of a run is its CPU seconds over the machine's CPUs.
        res["cpus"] = os.cpu_count()
        for key, used in (("cpu_e", cpu_deploys), ("cpu_b", cpu_floors)):
            if used:
                res[key] = {size: {k: summary(v) for k, v in parts.items() if v} for size, parts in used.items()}
        if "c" in only:
            values = []
            for i in range(args.runs):
                values.append(playbook("site.yml"))
                log("(c) unchanged re-run %d: %.1f s" % (i + 1, values[-1]))
            res["c"] = summary(values)
        if "d" in only:
            values = []
            for i in range(args.runs):
                write_inventory(2, concurrency={n2["workers"][1]: 3 + i % 2})
                values.append(playbook("site.yml"))
                log("(d) concurrency edit re-run %d: %.1f s" % (i + 1, values[-1]))
            write_inventory(2)
            playbook("site.yml")
            res["d"] = summary(values)
        if "g" in only:
            res["g"] = summary([new_release(n2, i) for i in range(args.runs)])
        if "h" in only:
            values = {"plain": [], "tls": []}
            for mode in ("plain", "tls"):
                if mode == "tls":
                    # As the README of redis_broker tells: the workers stop first, or each waits
                    # for its stop timeout in Celery's reconnect loop.
                    tls_dir = os.path.join(OUT, "tls")
                    shutil.rmtree(tls_dir, ignore_errors=True)
                    playbook("playbooks/test-ca.yml", "-e", "test_ca_dir=%s" % tls_dir)
                    write_inventory(2, tls_dir=tls_dir)
                    stop = playbook("playbooks/stop.yml")
                    log("(h) Redis with TLS: %.1f s for stop.yml, then %.1f s for site.yml" % (stop, playbook("site.yml")))
                for i in range(args.f_runs):
                    values[mode].append(throughput(n2, args.tasks, "kit"))
                    log("(h) Redis, %s, run %d: %.0f tasks/s" % (mode, i + 1, values[mode][-1]))
            res["h"] = {mode: summary(v) for mode, v in values.items()}
            write_inventory(2)
            playbook("playbooks/stop.yml")
            playbook("site.yml")
        if "f" in only:
            for broker in ("redis", "rabbitmq"):
                if broker == "rabbitmq":
                    log("(f) four-host cluster with RabbitMQ")
                    _, n2 = fresh_deploy(2, broker="rabbitmq")
                # Alternated, so that a slow spell of the machine weighs on both settings alike;
                # the ratio is also taken pair by pair (a run of the kit's, then one of the defaults).
                values = {"kit": [], "defaults": []}
                for i in range(args.f_runs):
                    for mode in ("kit", "defaults"):
                        values[mode].append(throughput(n2, args.tasks, mode))
                        log("(f) %s, %s, run %d: %.0f tasks/s" % (broker, mode, i + 1, values[mode][-1]))
                res.setdefault("f", {})[broker] = {mode: summary(v) for mode, v in values.items()}
                res["f"][broker]["pairs"] = summary([k / d for k, d in zip(values["kit"], values["defaults"])])
            res["f_runs"] = args.f_runs
    finally:
        destroy()
    if "i" in only:
        res["i"] = scenario_runs("i", "redis-sentinel", "master_is_lost", ("promoted", "stopped", "lost", "failed", "twice"),
                                 args.runs, "FAILOVER_REPORT")
    if "j" in only:
        res["j"] = scenario_runs("j", "rabbitmq-cluster", "bench_throughput or (lost_under_load and kill)",
                                 ("quorum", "classic", "stopped", "host_stopped", "lost", "failed", "twice"), args.runs,
                                 "CLUSTER_REPORT")
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    table = report(res)
    print(table)
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(table + "\n")
    if "e" in res or "f" in res:
        plot(res, os.path.join(OUT, "bench.png"))
        log("plot: %s" % os.path.join(OUT, "bench.png"))
    if args.publish:
        publish(res, table, " ".join(sys.argv[1:]))


def scenario_runs(figure, scenario, tests, keys, runs, report_var):
    """A Molecule scenario's hosts, converged once, then its tests (-k TESTS) --runs times; each
    run's numbers KEYS from the JSON report the tests write to the file $REPORT_VAR names."""
    report_file = os.path.join(OUT, "%s.json" % scenario)
    env = dict(os.environ, MOLECULE_DEBIAN_VERSION="12", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               PYTEST_ADDOPTS="-k '%s'" % tests, **{report_var: report_file})
    found = {k: [] for k in keys}
    try:
        for step in ("destroy", "create", "prepare", "converge"):
            log("(%s) molecule %s -s %s" % (figure, step, scenario))
            run(["molecule", step, "-s", scenario], cwd=ROOT, env=env, capture_output=True)
        for i in range(runs):
            if os.path.exists(report_file):
                os.remove(report_file)
            proc = run(["molecule", "verify", "-s", scenario], cwd=ROOT, env=env, capture_output=True, check=False)
            if not os.path.exists(report_file):
                raise SystemExit("bench: (%s) run %d wrote no report:\n%s"
                                 % (figure, i + 1, (proc.stdout + proc.stderr)[-3000:]))
            with open(report_file) as f:
                numbers = json.load(f)
            for key in keys:
                found[key].append(numbers[key])
            log("(%s) run %d: %s" % (figure, i + 1, numbers))
    finally:
        run(["molecule", "destroy", "-s", scenario], cwd=ROOT, env=env, capture_output=True, check=False)
    return {k: summary(v) for k, v in found.items()}


def publish(res, table, argv):
    """The page of the latest run, docs/benchmark.md, with its numbers and plot beside it. Earlier
    runs are in git's history of these files."""
    docs = os.path.join(ROOT, "docs")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    # What the benchmark runs: a change elsewhere (docs, tests) does not make the run's commit wrong.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "ansible.cfg", "site.yml",
                            "roles", "playbooks", "plugins", "inventories", "bench", "requirements.txt"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    shutil.copy(os.path.join(OUT, "results.json"), os.path.join(docs, "bench-results.json"))
    plotted = os.path.exists(os.path.join(OUT, "bench.png")) and ("e" in res or "f" in res)
    if plotted:
        shutil.copy(os.path.join(OUT, "bench.png"), os.path.join(docs, "bench.png"))
    # The docstring's paragraphs on the hosts and on the figures.
    hosts, figures = __doc__.split("\n\n")[2:4]
    with open(os.path.join(docs, "benchmark.md"), "w") as f:
        f.write("# Benchmark\n\nThe latest run of `./kit bench %s`, on commit %s%s, %s (UTC).\n"
                "Earlier runs are in the git history of this page and of `docs/bench-results.json`.\n\n"
                "%s\n\n```\n%s\n```\n\n%s\n"
                % (argv.replace("--publish", "").strip(), commit, " with uncommitted changes" if dirty else "",
                   res["date"], hosts, figures, table))
        if plotted:
            f.write("\n![(e) deploy time by worker hosts and (f) throughput](bench.png)\n")
    log("published: docs/benchmark.md")


def row(label, s, unit="s", target=""):
    fmt = "%.1f" if unit == "s" else "%.0f"
    return "| %s | %s | %s | %s | %s |" % (label, fmt % s["median"], fmt % s["min"], fmt % s["max"], target)


def report(res):
    lines = ["Benchmark of %s, %s; %d runs per figure; strategy %s." % (res["date"], res["machine"], res["runs"],
                                                                       res["strategy"]),
             "", "| figure | median | min | max | target |", "|---|---|---|---|---|"]
    if "a" in res:
        ratio = " (a)/(b) = %.2f, target <= 1.5" % (res["a"]["median"] / res["b"]["median"]) if "b" in res else ""
        lines.append(row("(a) fresh deploy, 4 hosts, to first task result", res["a"], target=ratio.strip()))
    if "b" in res:
        lines.append(row("(b) floor: bench/floor.sh, same installs, %d hosts in parallel"
                         % (res.get("floor_workers", 2) + 2), res["b"]))
    if "c" in res:
        lines.append(row("(c) unchanged re-run, 4 hosts", res["c"], target="< 8 s"))
    if "d" in res:
        lines.append(row("(d) re-run after one host's concurrency edit", res["d"], target="< 10 s"))
    if "g" in res:
        lines.append(row("(g) new release of the app's code to every node serving it, 4 hosts", res["g"]))
    if "e" in res:
        for k in sorted(res["e"], key=int):
            lines.append(row("(e) fresh deploy, %s worker host(s) + broker + beat" % k, res["e"][k]))
        if "1" in res["e"] and "8" in res["e"]:
            lines.append("| (e) 8 worker hosts / 1 | %.2f | | | <= 1.5 |" % (res["e"]["8"]["median"] / res["e"]["1"]["median"]))
    if "b_big" in res:
        big = res["b_big_workers"]
        lines.append(row("(b) floor, %d worker hosts + broker + beat" % big, res["b_big"]))
        lines.append("| (b) floor, %d worker hosts / %d | %.2f | | | |"
                     % (big, res.get("floor_workers", 2), res["b_big"]["median"] / res["b"]["median"]))
        if str(big) in res.get("e", {}):
            lines.append("| (e) / (b) with %d worker hosts: the kit over the floor | %.2f | | | |"
                         % (big, res["e"][str(big)]["median"] / res["b_big"]["median"]))
    for broker, modes in res.get("f", {}).items():
        for mode in ("kit", "defaults"):
            if mode in modes:
                lines.append(row("(f) %s, %s: tasks/s, %d no-op tasks, %d runs"
                                 % (broker, "kit's settings" if mode == "kit" else "Celery's defaults", res["tasks"],
                                    len(modes[mode]["runs"])), modes[mode], unit="tasks/s"))
        if "kit" in modes and "defaults" in modes:
            lines.append("| (f) %s kit / defaults | %.2f | | | >= 1 |" % (broker, modes["kit"]["median"] / modes["defaults"]["median"]))
        if "pairs" in modes:
            p = modes["pairs"]
            lines.append("| (f) %s kit / defaults, run by run | %.2f | %.2f | %.2f | |" % (broker, p["median"], p["min"], p["max"]))
    if "h" in res:
        for mode in ("plain", "tls"):
            lines.append(row("(h) Redis %s: tasks/s, %d no-op tasks" % ("with TLS" if mode == "tls" else "plain TCP", res["tasks"]),
                             res["h"][mode], unit="tasks/s"))
        lines.append("| (h) TLS / plain | %.2f | | | reported |" % (res["h"]["tls"]["median"] / res["h"]["plain"]["median"]))
    if "i" in res:
        lines.append(row("(i) Sentinel: s from the master's loss to a promoted replica", res["i"]["promoted"]))
        lines.append(row("(i) Sentinel: s tasks stopped flowing", res["i"]["stopped"]))
        for key in ("lost", "failed", "twice"):
            lines.append(row("(i) Sentinel: tasks %s, of 1,000" % ("run twice" if key == "twice" else key),
                             res["i"][key], unit="tasks"))
    if "j" in res:
        for key, label in (("quorum", "quorum queues, publisher confirms"), ("classic", "a classic queue, no confirms")):
            lines.append(row("(j) RabbitMQ cluster, %s: tasks/s, 5,000 no-op tasks" % label, res["j"][key], unit="tasks/s"))
        lines.append("| (j) quorum / classic | %.2f | | | reported |" % (res["j"]["quorum"]["median"] / res["j"]["classic"]["median"]))
        lines.append(row("(j) RabbitMQ cluster: s tasks stopped flowing after the leader's node was killed", res["j"]["stopped"]))
        lines.append(row("(j) RabbitMQ cluster: s the worker host connected to that node stopped", res["j"]["host_stopped"]))
        for key in ("lost", "failed", "twice"):
            lines.append(row("(j) RabbitMQ cluster: tasks %s, of 1,000" % ("run twice" if key == "twice" else key),
                             res["j"][key], unit="tasks"))
    if "cpu_e" in res or "cpu_b" in res:
        lines += ["", "CPU seconds used (medians): the whole machine, the hosts (containers) and the controller "
                  "(ansible-playbook or floor.sh, docker, dockerd); with %d CPUs, a run takes at least its CPU "
                  "seconds / %d." % (res["cpus"], res["cpus"]),
                  "", "| run | wall s | CPU s | hosts | controller | CPU s / %d |" % res["cpus"], "|---|---|---|---|---|---|"]
        floor_walls = {str(res.get("floor_workers", 2)): res.get("b"), str(res.get("b_big_workers")): res.get("b_big")}
        for key, label, walls in (("cpu_b", "(b) floor, %s worker host(s)", floor_walls),
                                  ("cpu_e", "(e) fresh deploy, %s worker host(s)", res.get("e", {}))):
            for size in sorted(res.get(key, {}), key=int):
                c, wall = res[key][size], walls.get(size)
                cells = [wall and wall["median"]] + [c[k]["median"] if k in c else None
                                                     for k in ("machine", "hosts", "controller")]
                cells.append(c["machine"]["median"] / res["cpus"])
                lines.append("| %s | %s |" % (label % size, " | ".join("-" if v is None else "%.1f" % v for v in cells)))
    return "\n".join(lines)


def plot(res, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # One panel per figure measured in this run: (e), (f) or both.
    panels = [k for k in ("e", "f") if k in res] or ["e"]
    fig, row = plt.subplots(1, len(panels), figsize=(max(8.0, 5.5 * len(panels)), 4.2), squeeze=False)
    axes = dict(zip(panels, row[0]))
    if "e" in res:
        ks = sorted(res["e"], key=int)
        x = [int(k) for k in ks]
        med = [res["e"][k]["median"] for k in ks]
        err = [[m - res["e"][k]["min"] for k, m in zip(ks, med)], [res["e"][k]["max"] - m for k, m in zip(ks, med)]]
        axes["e"].errorbar(x, med, yerr=err, marker="o", capsize=4, label="site.yml, fresh hosts")
        if "b" in res:
            fx = [res.get("floor_workers", 2)] + ([res["b_big_workers"]] if "b_big" in res else [])
            fy = [res["b"]["median"]] + ([res["b_big"]["median"]] if "b_big" in res else [])
            axes["e"].plot(fx, fy, color="grey", linestyle="--", marker="s", label="floor (b), bare shell")
        if "cpu_e" in res:
            ck = sorted(res["cpu_e"], key=int)
            axes["e"].plot([int(k) for k in ck], [res["cpu_e"][k]["machine"]["median"] / res["cpus"] for k in ck],
                           color="tab:red", linestyle=":", marker=".",
                           label="site.yml's CPU seconds / %d CPUs" % res["cpus"])
        axes["e"].set_xscale("log", base=2)
        axes["e"].set_xticks(x, [str(v) for v in x])
        axes["e"].set_xlabel("worker hosts (plus broker and beat)")
        axes["e"].set_ylabel("seconds to first task result")
        axes["e"].set_ylim(bottom=0)
        axes["e"].set_title("(e) fresh deploy")
        axes["e"].legend()
    if "f" in res:
        brokers = list(res["f"])
        for j, mode in enumerate(("kit", "defaults")):
            vals = [res["f"][b][mode] for b in brokers]
            med = [v["median"] for v in vals]
            err = [[m - v["min"] for m, v in zip(med, vals)], [v["max"] - m for m, v in zip(med, vals)]]
            axes["f"].bar([i + j * 0.38 for i in range(len(brokers))], med, 0.38, yerr=err, capsize=4,
                        label="kit's settings" if mode == "kit" else "Celery's defaults")
        axes["f"].set_xticks([i + 0.19 for i in range(len(brokers))], brokers)
        axes["f"].set_ylabel("tasks per second")
        axes["f"].set_title("(f) %d no-op tasks, 2 worker hosts" % res["tasks"])
        axes["f"].legend()
    fig.suptitle("celery kit benchmark, %s, %s" % (res["date"], res["machine"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
