"""The monitoring role's files (no containers): render Prometheus's config, the kit's alert rules,
Alertmanager's config and the web config as the role does, check each with the servers' own
tools (promtool and amtool from Debian's packages, scripts/ensure-prometheus-tools), and run the
alert rules' unit tests (tests/monitoring/alert-rules-test.yml) with `promtool test rules`."""

import os
import shutil
import subprocess

import pytest

from playbook_runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(ROOT, "tests", "render-monitoring.yml")
TOOLS = os.path.join(ROOT, ".cache", "prometheus-tools")
RUNNER = Runner()


def tool(name):
    path = os.path.join(TOOLS, name)
    if not os.access(path, os.X_OK):
        subprocess.run([os.path.join(ROOT, "scripts", "ensure-prometheus-tools")], check=True, timeout=600)
    return path


def render(tmp_path, case_vars=None):
    return RUNNER.render(PLAYBOOK, [os.path.join(ROOT, "roles", "monitoring", "filter_plugins")], tmp_path, case_vars)


def run(*argv):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    return render(tmp_path_factory.mktemp("monitoring"))


def test_alert_rules_pass_their_unit_tests(rendered):
    shutil.copy(os.path.join(ROOT, "tests", "monitoring", "alert-rules-test.yml"), rendered)
    rc, output = run(tool("promtool"), "test", "rules", str(rendered / "alert-rules-test.yml"))
    assert rc == 0, output


def test_prometheus_reads_its_config_and_rules(rendered):
    rc, output = run(tool("promtool"), "check", "config", str(rendered / "prometheus.yml"))
    assert rc == 0, output
    assert "SUCCESS: 7 rules found" in output, output
    rc, output = run(tool("promtool"), "check", "web-config", str(rendered / "celery-kit-web.yml"))
    assert rc == 0, output


def test_alertmanager_reads_its_config(rendered):
    rc, output = run(tool("amtool"), "check-config", str(rendered / "alertmanager.yml"))
    assert rc == 0, output


def test_prometheus_scrapes_every_host_and_names_no_password(rendered):
    text = (rendered / "prometheus.yml").read_text()
    for target in ("broker1:9100", "worker1:9100", "beat1:9100", "ops1:9100", "broker1:9121",
                   "192.0.2.10:9808", "192.0.2.10:9090", "192.0.2.10:9093"):
        assert '"%s"' % target in text, target
    assert "test-Monitoring-pass" not in text
    assert "test-Monitoring-pass" not in (rendered / "celery-kit-web.yml").read_text()


def test_thresholds_come_from_the_variables(tmp_path):
    out = render(tmp_path, {"monitoring_alert_worker_down_for": 45, "monitoring_alert_failure_ratio": 0.25,
                            "monitoring_alert_queue_min_length": 7})
    text = (out / "celery-kit-rules.yml").read_text()
    assert "for: 45s" in text and "> 0.25" in text and "celery_queue_length > 7" in text
    rc, output = run(tool("promtool"), "check", "rules", str(out / "celery-kit-rules.yml"))
    assert rc == 0, output
