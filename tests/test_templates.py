"""Template tests: render /etc/default/celeryd and /etc/default/celerybeat for a table of
inventory cases (no containers), check them with `sh -n`, and read them back with sh to prove
each variable holds exactly what the inventory asked for."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(ROOT, "tests", "render.yml")

CASES = {
    "defaults": ({}, {
        "CELERYD_NODES": "worker1",
        "CELERYD_OPTS": "--time-limit=300 --concurrency=2 --queues=celery,hipri",
    }),
    "several nodes, per-node concurrency and queues": ({
        "celery_worker_concurrency": 8,
        "celery_worker_queues": ["celery"],
        "celery_worker_nodes": ["default", {"name": "fast", "concurrency": 2, "queues": ["hipri"]}],
    }, {
        "CELERYD_NODES": "default fast",
        "CELERYD_OPTS": "--time-limit=300 --concurrency=8 --queues=celery -c:fast 2 -Q:fast hipri",
    }),
    "time limit, log level and extra options": ({
        "celery_worker_time_limit": 120,
        "celery_worker_loglevel": "DEBUG",
        "celery_worker_extra_opts": "-O fair",
    }, {
        "CELERYD_OPTS": "--time-limit=120 --concurrency=2 --queues=celery,hipri -O fair",
        "CELERYD_LOG_LEVEL": "DEBUG",
    }),
    "other paths and user": ({
        "celery_venv": "/srv/venvs/app",
        "celery_app_dir": "/srv/app",
        "celery_app_module": "myapp.celery:app",
        "celery_user": "tasks",
        "celery_group": "tasks",
    }, {
        "CELERY_BIN": "/srv/venvs/app/bin/celery",
        "CELERY_APP": "myapp.celery:app",
        "CELERYD_CHDIR": "/srv/app",
        "CELERYD_USER": "tasks",
        "CELERYD_GROUP": "tasks",
    }),
}

ALWAYS = {
    "CELERYD_LOG_FILE": "/var/log/celery/%n%I.log",
    "CELERYD_PID_FILE": "/run/celery/%n.pid",
    "CELERY_CREATE_DIRS": "1",
}


def render(tmp_path, case_vars):
    case = tmp_path / "case.json"
    case.write_text(json.dumps(case_vars))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_LOCALHOST_WARNING="false")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), PLAYBOOK,
         "-e", "@%s" % case, "-e", "render_dir=%s" % out,
         "-e", "ansible_python_interpreter=%s" % sys.executable],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def read_back(path, names):
    """Source the file in sh, as the init scripts do, and print each variable."""
    script = ". %s\n" % path + "".join('printf "%%s\\0" "$%s"\n' % n for n in names)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.split("\0")))


@pytest.mark.parametrize("name", sorted(CASES))
def test_celeryd_renders_and_reads_back(tmp_path, name):
    case_vars, expected = CASES[name]
    out = render(tmp_path, case_vars)
    celeryd = out / "celeryd"
    assert subprocess.run(["sh", "-n", str(celeryd)]).returncode == 0
    want = dict(ALWAYS, **expected)
    assert read_back(celeryd, sorted(want)) == want
    celerybeat = out / "celerybeat"
    assert subprocess.run(["sh", "-n", str(celerybeat)]).returncode == 0
    beat = read_back(celerybeat, ["CELERY_BIN", "CELERYBEAT_OPTS", "CELERYBEAT_USER"])
    assert beat["CELERYBEAT_OPTS"].startswith("--schedule=")
    assert beat["CELERYBEAT_USER"] == want.get("CELERYD_USER", "celery")


def test_worker_unit_reads_the_defaults_file(tmp_path):
    out = render(tmp_path, {})
    unit = (out / "celery-worker@.service").read_text()
    assert "EnvironmentFile=/etc/default/celeryd" in unit
    assert "KillMode=mixed" in unit
    assert "multi start %i $CELERYD_OPTS" in unit
    assert "TimeoutStopSec=360" in unit  # time limit 300 + 60
