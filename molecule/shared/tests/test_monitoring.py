"""The monitoring tier, on the monitoring host: Prometheus scrapes every exporter of the inventory,
counts the tasks sent through the deployed broker exactly, and a stopped worker node fires its
alert in Alertmanager. Prometheus's graph of queue depth during a burst is opened in a real
(headless) Chromium and saved next to Flower's screenshots."""

import base64
import functools
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import IMPORT_APP, broadcast, host_of, hosts_in, inventory_vars, playbook, run_client, worker_nodes
from flower_browser import wait_for

MONITORING = hosts_in("monitoring")
pytestmark = pytest.mark.skipif(not MONITORING, reason="no host in the monitoring group")

ARTIFACTS = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "artifacts",
                         os.environ.get("MOLECULE_SCENARIO_NAME", "molecule"))


@functools.lru_cache(maxsize=None)
def address(name):
    host = host_of(name)
    return host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def settings():
    values = inventory_vars(MONITORING[0])
    return {"user": values.get("monitoring_user", "admin"), "password": values["vault_monitoring_password"],
            "interval": int(values.get("monitoring_scrape_interval", 15)),
            "down_for": int(values.get("monitoring_alert_worker_down_for", 60))}


def get(port, path, auth=True):
    request = urllib.request.Request("http://%s:%d%s" % (address(MONITORING[0]), port, path))
    if auth:
        s = settings()
        token = base64.b64encode(("%s:%s" % (s["user"], s["password"])).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def query(expr):
    """The value of a PromQL expression that gives one number (0 when it gives nothing)."""
    result = get(9090, "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def worker_names():
    return ["%s@%s" % (node, name) for name in hosts_in("celery_workers") for node in worker_nodes(name)]


def test_prometheus_and_alertmanager_refuse_requests_without_credentials():
    for port in (9090, 9093):
        with pytest.raises(urllib.error.HTTPError) as err:
            get(port, "/api/v1/status/buildinfo" if port == 9090 else "/api/v2/status", auth=False)
        assert err.value.code == 401, port


def test_every_listener_binds_its_host_address():
    """No exporter or server listens on every address; Alertmanager has no cluster port."""
    redis = inventory_vars(hosts_in("brokers")[0]).get("celery_broker", "redis") == "redis"
    ports = {"9100", "9121" if redis else "15692"}
    for name in hosts_in("all"):
        listening = host_of(name).check_output("ss -Hltn").split("\n")
        mine = {"9090", "9093", "9808"} if name in MONITORING else set()
        wanted = ports if name in hosts_in("brokers") else {"9100"}
        local = [line.split()[3] for line in listening if line.strip()]
        for port in wanted | mine:
            bound = [a for a in local if a.rsplit(":", 1)[1] == port]
            assert bound == ["%s:%s" % (address(name), port)], (name, port, local)
        assert not [a for a in local if a.endswith(":9094")], (name, local)
        # Never, not even as its package was installed (packages_start: false): the node
        # exporter logs each address it listens on.
        log = host_of(name).check_output("journalctl -u prometheus-node-exporter --no-pager -o cat | grep -i listening || true")
        assert log and "[::]:9100" not in log and "0.0.0.0:9100" not in log, (name, log)


def test_every_prometheus_target_is_up():
    def all_up():
        targets = get(9090, "/api/v1/targets?state=active")["data"]["activeTargets"]
        jobs = {}
        for t in targets:
            jobs.setdefault(t["labels"]["job"], []).append((t["labels"].get("host"), t["health"], t["lastError"]))
        if len(jobs.get("node", [])) == len(hosts_in("all")) and all(
                h == "up" for entries in jobs.values() for _, h, _ in entries):
            return jobs
        all_up.last = jobs
        return None

    all_up.last = None
    try:
        jobs = wait_for("every target up", all_up, 60)
    except AssertionError:
        raise AssertionError("targets: %s" % json.dumps(all_up.last, indent=1))
    broker = inventory_vars(hosts_in("brokers")[0]).get("celery_broker", "redis")
    assert {"prometheus", "alertmanager", "celery", "node", broker} <= set(jobs), jobs


def test_the_exporter_sees_every_node_and_beat():
    def seen():
        return all(query('celery_worker_up{worker="%s"}' % w) == 1 for w in worker_names())
    wait_for("celery_worker_up 1 for %s" % worker_names(), seen, 60)
    for w in worker_names():
        assert query('celery_worker_node_info{worker="%s"}' % w) == 1, "%s not in any node exporter's list" % w
    if hosts_in("celery_beat"):
        # Beat's heartbeat entry (every 60 s) moves its time on.
        first = query("celery_beat_last_run_timestamp_seconds")
        wait_for("beat's next heartbeat after %s" % first,
                 lambda: query("celery_beat_last_run_timestamp_seconds") > first, 60 + 3 * settings()["interval"])


def test_succeeded_counter_grows_by_exactly_the_tasks_sent():
    number = 25
    expr = 'sum(celery_tasks_total{task="proj.tasks.mul",state="succeeded"}) or vector(0)'
    before = query(expr)
    results = run_client(host_of(hosts_in("celery_workers")[0]), "\n".join([
        "import json",
        IMPORT_APP,
        "from celery import group",
        "r = group(app.signature('proj.tasks.mul', (i, 2)) for i in range(%d)).apply_async()" % number,
        "print(json.dumps(r.get(timeout=60)))"]))
    assert results == [i * 2 for i in range(number)]
    wait_for("the succeeded counter to reach %d + %d" % (before, number), lambda: query(expr) >= before + number, 60)
    # Two scrapes later it has not counted any task twice.
    time.sleep(2 * settings()["interval"] + 1)
    assert query(expr) == before + number, (before, query(expr))


def test_a_stopped_worker_node_fires_its_alert_in_alertmanager():
    host_name = hosts_in("celery_workers")[-1]
    node = worker_nodes(host_name)[0]
    worker = "%s@%s" % (node, host_name)
    host = host_of(host_name)
    s = settings()

    def firing():
        alerts = get(9093, "/api/v2/alerts?active=true&silenced=false&inhibited=false")
        return [a for a in alerts if a["labels"].get("alertname") == "CeleryWorkerDown"
                and a["labels"].get("worker") == worker]

    assert not firing(), "CeleryWorkerDown fires for %s before the stop" % worker
    stopped = time.monotonic()
    host.check_output("systemctl stop celery-worker@%s" % node)
    try:
        # `for` after the node's last heartbeat, plus a scrape, a rule evaluation and
        # Alertmanager's group_wait (10 s) to send it on.
        budget = s["down_for"] + 3 * s["interval"] + 10
        wait_for("CeleryWorkerDown for %s in Alertmanager" % worker, firing, budget + 30)
        took = time.monotonic() - stopped
        print("CeleryWorkerDown for %s in Alertmanager %.1f s after the stop (for: %d s, budget %d s)"
              % (worker, took, s["down_for"], budget))
        assert took <= budget + 30, took
        # The operator's view lists it too.
        status = playbook("playbooks/status.yml")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "CeleryWorkerDown (critical" in status.stdout and worker in status.stdout, status.stdout
    finally:
        host.check_output("systemctl start celery-worker@%s" % node)
    assert worker in broadcast("ping", expected={worker})
    wait_for("CeleryWorkerDown for %s to resolve" % worker, lambda: not firing(), 120)


def test_prometheus_graph_of_queue_depth_during_a_burst():
    """A burst of 200 tasks of 0.2 s to hipri, which one node alone reads (prefetch 1): the queue
    holds messages for several scrapes, Prometheus saw it, and its graph page shows it in a real
    browser (artifacts/<scenario>/prometheus-queue-depth.png). On "celery", which every pool of
    a host reads, a burst drained between two of the exporter's reads in one CI run."""
    from flower_browser import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    s = settings()
    results = run_client(host_of(hosts_in("celery_workers")[0]), "\n".join([
        "import json",
        IMPORT_APP,
        "from celery import group",
        "r = group(app.signature('proj.tasks.record', (990000 + i, 0.2), queue='hipri')"
        " for i in range(200)).apply_async()",
        "print(json.dumps(len(r.get(timeout=300))))"]), timeout=320)
    assert results == 200
    time.sleep(s["interval"] + 1)
    peak = query('max_over_time(celery_queue_length{queue="hipri"}[3m])')
    print("queue hipri held up to %d messages during the burst" % peak)
    assert peak > 0

    os.makedirs(ARTIFACTS, exist_ok=True)
    # Debian's Prometheus has no React UI: its classic UI is at /classic/ (Debian 13 serves a
    # page that says so at /graph).
    url = "http://%s:9090/classic/graph?%s" % (address(MONITORING[0]), urllib.parse.urlencode(
        {"g0.expr": "celery_queue_length", "g0.tab": "0", "g0.range_input": "5m"}))
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": s["user"], "password": s["password"]},
                                          viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.goto(url, wait_until="networkidle")
            # The classic UI's graph is an SVG drawn by Rickshaw; the page holds hidden paths
            # (icons) too, so wait for one that is drawn with a size.
            try:
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('svg path'))"
                    ".some(p => { const b = p.getBBox(); return b.width > 0 && b.height > 0; })", timeout=30000)
            finally:
                page.wait_for_timeout(1000)
                page.screenshot(path=os.path.join(ARTIFACTS, "prometheus-queue-depth.png"), full_page=True)
            drawn = page.eval_on_selector_all("svg path", "paths => paths.length")
            legend = page.inner_text("body")
        finally:
            browser.close()
    assert drawn > 0 and 'queue="hipri"' in legend, legend[:2000]
