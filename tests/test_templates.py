"""Template tests (no containers): render /etc/default/celeryd, /etc/default/celerybeat, the
units and each node's drop-in for a table of inventory cases; check the shell files with
`sh -n` and read them back with sh; ask celery multi itself (the version the kit deploys) what
each node runs with, both as /etc/init.d/celeryd starts them (all nodes at once) and as systemd
does (one node per unit); and check the units with `systemd-analyze verify`."""

import json
import os
import re
import shlex
import shutil
import subprocess

import pytest
from celery.apps.multi import MultiParser, NamespacedOptionParser

from playbook_runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAYBOOK = os.path.join(ROOT, "tests", "render.yml")
FILTERS = [os.path.join(ROOT, "roles", r, "filter_plugins") for r in ("celery_worker", "celery_app")]

# Case: (inventory vars, expected variables of /etc/default/celeryd, expected options per node).
CASES = {
    "defaults": ({}, {
        "CELERYD_NODES": "worker1",
        "CELERYD_OPTS": "--queues=celery,hipri --pool=prefork --time-limit=300",
    }, {
        # No pool size: Celery's own default, one process per CPU of the host.
        "worker1": {"--concurrency": None, "--queues": "celery,hipri", "--loglevel": "WARNING"},
    }),
    "the guide's ten nodes: -Q:1-3 images,video -Q:4,5 data -Q default -L:4,5 debug": ({
        "celery_worker_nodes": 10,
        "celery_worker_concurrency": 1,
        "celery_worker_queues": ["default"],
        "celery_worker_loglevel": "INFO",
        "celery_worker_node_opts": {"1-3": {"queues": ["images", "video"]},
                                    "4,5": {"queues": ["data"], "loglevel": "debug"}},
    }, {
        "CELERYD_NODES": " ".join("celery%d" % i for i in range(1, 11)),
        "CELERYD_OPTS": "--concurrency=1 --queues=default --pool=prefork --time-limit=300"
                        " --queues:celery1,celery2,celery3=images,video --queues:celery4,celery5=data"
                        " --loglevel:celery4,celery5=DEBUG",
    }, dict(
        {"celery%d" % i: {"--queues": "images,video", "--loglevel": "INFO"} for i in (1, 2, 3)},
        **{"celery%d" % i: {"--queues": "data", "--loglevel": "DEBUG"} for i in (4, 5)},
        **{"celery%d" % i: {"--queues": "default", "--loglevel": "INFO"} for i in range(6, 11)},
    )),
    "per-node concurrency, names with %h, -O fair": ({
        "celery_worker_concurrency": 8,
        "celery_worker_queues": ["celery"],
        "celery_worker_optimization": "fair",
        "celery_worker_nodes": ["default@%h", {"name": "fast", "hostname": "%n.example", "concurrency": 2,
                                               "queues": ["hipri"]}],
    }, {
        "CELERYD_NODES": "default@%h fast@%n.example",
        "CELERYD_OPTS": "--concurrency=8 --queues=celery --pool=prefork --time-limit=300 --optimization=fair"
                        " --concurrency:fast=2 --queues:fast=hipri",
    }, {
        "default": {"--concurrency": "8", "--queues": "celery", "--optimization": "fair"},
        "fast": {"--concurrency": "2", "--queues": "hipri", "--optimization": "fair"},
    }),
    "pools, autoscale, child limits and time limits": ({
        "celery_worker_time_limit": 120,
        "celery_worker_soft_time_limit": 100,
        "celery_worker_max_tasks_per_child": 50,
        "celery_worker_loglevel": "warning",
        "celery_worker_nodes": ["cpu", {"name": "io", "pool": "gevent", "concurrency": 100},
                                {"name": "auto", "autoscale": "6,2", "max_memory_per_child": 200000},
                                {"name": "one", "pool": "solo"}, {"name": "thr", "pool": "threads"},
                                {"name": "ev", "pool": "eventlet", "time_limit": 60, "soft_time_limit": 50}],
        "celery_worker_extra_opts": "--without-mingle",
    }, {
        "CELERYD_LOG_LEVEL": "WARNING",
        "CELERYD_OPTS": "--queues=celery,hipri --pool=prefork --max-tasks-per-child=50"
                        " --time-limit=120 --soft-time-limit=100 --concurrency:io=100"
                        " --pool:io=gevent --pool:one=solo --pool:thr=threads --pool:ev=eventlet"
                        " --autoscale:auto=6,2 --max-memory-per-child:auto=200000 --time-limit:ev=60"
                        " --soft-time-limit:ev=50 --without-mingle",
    }, {
        "cpu": {"--pool": "prefork", "--concurrency": None, "--max-tasks-per-child": "50", "--loglevel": "WARNING"},
        "io": {"--pool": "gevent", "--concurrency": "100"},
        "auto": {"--autoscale": "6,2", "--max-memory-per-child": "200000"},
        "one": {"--pool": "solo"},
        "ev": {"--pool": "eventlet", "--time-limit": "60", "--soft-time-limit": "50"},
    }),
    "other paths and user": ({
        "celery_venv": "/srv/venvs/app",
        "celery_app_dir": "/srv/app",
        "celery_app_module": "myapp.celery:app",
        "celery_user": "tasks",
        "celery_group": "tasks",
        "celery_worker_su_args": "--login",
    }, {
        "CELERY_BIN": "/srv/venvs/app/bin/celery",
        "CELERY_APP": "myapp.celery:app",
        "CELERYD_CHDIR": "/srv/app",
        "CELERYD_USER": "tasks",
        "CELERYD_GROUP": "tasks",
        "CELERYD_SU_ARGS": "--login",
    }, {}),
}

ALWAYS = {
    "CELERYD_LOG_FILE": "/var/log/celery/%n%I.log",
    "CELERYD_PID_FILE": "/run/celery/%n.pid",
    "CELERY_CREATE_DIRS": "1",
}


def render(tmp_path, case_vars):
    return RUNNER.render(PLAYBOOK, FILTERS, tmp_path, case_vars)


# Runs ansible-playbook for render() without a Python start-up per case (playbook_runner.py).
RUNNER = Runner()


_RENDERED = {}


def render_case(tmp_path_factory, name):
    """Each table case is rendered once per test session."""
    if name not in _RENDERED:
        _RENDERED[name] = render(tmp_path_factory.mktemp("case"), CASES[name][0])
    return _RENDERED[name]


def read_back(path, names):
    """Source the file in sh, as the init scripts do, and print each variable."""
    script = ". %s\n" % path + "".join('printf "%%s\\0" "$%s"\n' % n for n in names)
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    return dict(zip(names, out.split("\0")))


def multi(names, opts, loglevel):
    """What celery multi makes of `multi start NAMES $CELERYD_OPTS --loglevel=L`: node -> options."""
    argv = shlex.split(names) + shlex.split(opts) + ["--loglevel=" + loglevel]
    p = NamespacedOptionParser(argv)
    p.parse()
    nodes = {}
    for node in MultiParser(cmd="celery worker").parse(p):
        opts = {}
        for arg in node.argv[1:]:
            key, eq, value = arg.partition("=")
            if eq and key.startswith("--"):
                opts[key] = value
        nodes[node.name.split("@")[0]] = opts
    return nodes


@pytest.mark.parametrize("name", sorted(CASES))
def test_celeryd_renders_and_reads_back(tmp_path_factory, name):
    _, expected, _ = CASES[name]
    out = render_case(tmp_path_factory, name)
    assert json.loads((out / "problems.json").read_text()) == []
    celeryd = out / "celeryd"
    assert subprocess.run(["sh", "-n", str(celeryd)]).returncode == 0
    want = dict(ALWAYS, **expected)
    assert read_back(celeryd, sorted(want)) == want
    celerybeat = out / "celerybeat"
    assert subprocess.run(["sh", "-n", str(celerybeat)]).returncode == 0
    beat = read_back(celerybeat, ["CELERY_BIN", "CELERYBEAT_OPTS", "CELERYBEAT_USER"])
    assert beat["CELERYBEAT_OPTS"].startswith("--schedule=")
    assert beat["CELERYBEAT_USER"] == want.get("CELERYD_USER", "celery")


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_node_gets_its_options_from_init_d_and_from_systemd(tmp_path_factory, name):
    """celery multi applies the same options to a node whether it starts all nodes (init.d)
    or that node alone (a systemd unit), and they are the ones the inventory asked for."""
    _, _, per_node = CASES[name]
    out = render_case(tmp_path_factory, name)
    env = read_back(out / "celeryd", ["CELERYD_NODES", "CELERYD_OPTS", "CELERYD_LOG_LEVEL"])
    together = multi(env["CELERYD_NODES"], env["CELERYD_OPTS"], env["CELERYD_LOG_LEVEL"])
    for full in env["CELERYD_NODES"].split():
        short = full.split("@")[0]
        dropin = (out / ("%s.conf" % short)).read_text()
        node = re.search(r'^Environment="CELERYD_NODE=(.*)"$', dropin, re.M).group(1).replace("%%", "%")
        assert node == full
        alone = multi(node, env["CELERYD_OPTS"], env["CELERYD_LOG_LEVEL"])
        assert alone == {short: together[short]}, short
    for short, options in per_node.items():
        for key, value in options.items():
            assert together[short].get(key) == value, (short, key, together[short])


def test_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "celery").write_text("#!/bin/sh\n")
    (venv / "bin" / "celery").chmod(0o755)
    out = render(tmp_path, {"celery_venv": str(venv), "celery_app_dir": str(tmp_path),
                            "celery_worker_nodes": ["w1", "w2@%h"]})
    units = tmp_path / "units"
    units.mkdir()
    shutil.copy(out / "celery-worker@.service", units / "celery-worker@.service")
    for node in ("w1", "w2"):
        (units / ("celery-worker@%s.service.d" % node)).mkdir()
        shutil.copy(out / ("%s.conf" % node), units / ("celery-worker@%s.service.d" % node) / "node.conf")
    shutil.copy(out / "celerybeat.service", units / "celerybeat.service")
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(units / "celery-worker@w1.service"),
                           str(units / "celery-worker@w2.service"), str(units / "celerybeat.service")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Warnings about the unit files themselves fail the test too.
    assert "celery" not in proc.stderr, proc.stderr


def test_worker_unit_reads_the_defaults_file(tmp_path_factory):
    out = render_case(tmp_path_factory, "defaults")
    unit = (out / "celery-worker@.service").read_text()
    assert "EnvironmentFile=/etc/default/celeryd" in unit
    assert "KillMode=mixed" in unit
    assert "multi start ${CELERYD_NODE} $CELERYD_OPTS" in unit
    assert "TimeoutStopSec=360" in unit  # time limit 300 + 60
    assert "PIDFile=/run/celery/%i.pid" in unit


def test_a_node_restarts_for_its_settings_and_its_pool_size_alone_does_not(tmp_path):
    """A node restarts when its drop-in changes. A prefork node's pool size is applied live, so
    it is left out of the drop-in; other pools and extra options are in it."""
    def dropins(concurrency, extra):
        case = tmp_path / ("c%d%s" % (concurrency, extra.strip("-")))
        case.mkdir()
        out = render(case, {
            "celery_worker_concurrency": concurrency, "celery_worker_extra_opts": extra,
            "celery_worker_nodes": ["w1", {"name": "t1", "pool": "threads"},
                                    {"name": "a1", "autoscale": "4,1"}]})
        return {n: (out / ("%s.conf" % n)).read_text() for n in ("w1", "t1", "a1")}

    base, resized, extra = dropins(2, ""), dropins(3, ""), dropins(2, "--without-mingle")
    assert base["w1"] == resized["w1"] and "--concurrency=" not in base["w1"]
    assert "--pool=prefork" in base["w1"] and "pool size (--concurrency)" in base["w1"]
    for node in ("t1", "a1"):
        assert base[node] != resized[node] and "--concurrency=2" in base[node], node
    for node in ("w1", "t1", "a1"):
        assert base[node] != extra[node] and "--without-mingle" in extra[node], node


def test_logrotate_renames_and_never_truncates(tmp_path_factory):
    text = (render_case(tmp_path_factory, "defaults") / "celery").read_text()
    assert "/var/log/celery/*.log {" in text
    assert "copytruncate" not in text.replace("# ", "").split("{", 1)[1]
    assert "su celery celery" in text
    assert "delaycompress" in text


def test_extra_settings_are_python_literals(tmp_path):
    """celery_app_extra_settings of every YAML type render as Python literals: the rendered
    settings module imports, and holds the values as Python has them."""
    settings = {"task_track_started": True, "worker_disable_rate_limits": False, "result_expires": None,
                "worker_max_tasks_per_child": 100, "broker_pool_limit": 0.5, "task_default_queue": "it's \"q\"",
                "task_create_missing_queues": [1, "two", None, False],
                "broker_transport_options": {"priority_steps": [0, 3], "nested": {"deep": True, "s": "x\\y"}}}
    out = render(tmp_path, {"celery_app_extra_settings": settings})
    module = {}
    exec(compile((out / "config.py").read_text(), "config.py", "exec"), module)
    for name, value in settings.items():
        assert module[name] == value and type(module[name]) is type(value), name


def test_environment_file_reads_back_in_sh_as_given(tmp_path):
    """The environment file, sourced by sh as the init scripts source it, gives each value as
    the inventory has it (systemd reads the same quoting alike: checked on Debian 12 and 13)."""
    environment = {"PASSWORD": "it's $x \"q\" `id` \\n \\ back ; & | < >", "EMPTY": "", "NUMBER": 5}
    out = render(tmp_path, {"celery_app_environment": environment, "celery_app_django_settings": "mysite.settings"})
    got = read_back(out / "environment", list(environment) + ["DJANGO_SETTINGS_MODULE", "CELERY_CONFIG_MODULE"])
    assert got == dict({k: str(v) for k, v in environment.items()}, DJANGO_SETTINGS_MODULE="mysite.settings",
                       CELERY_CONFIG_MODULE="celery_kit.config")
