"""No inventory value can carry a command into /etc/default/celeryd, /etc/default/celerybeat,
/etc/default/celery-flower, a unit's ExecStart or WorkingDirectory, an init script, redis.conf,
the kit's settings module (celery_kit/config.py) or its environment file. Values that land in
those files unquoted, or inside double quotes that sh reads, are restricted to characters that
mean nothing there: each attempt below, one per
variable, must stop in preflight with a message naming the variable. Values that may hold
anything (passwords, schedule names, task arguments) are escaped instead; molecule/guard
deploys hostile ones and checks that the cluster works and that no command ran."""

import re

import pytest

from test_bad_input import assert_stopped_in_preflight, run_site

# What an attacker (or a bad paste) would put in: close the quotes, run a command.
PAYLOAD = '"; touch /tmp/pwned; echo "'
SUBSHELL = "$(touch /tmp/pwned)"
BACKTICK = "`touch /tmp/pwned`"


def assert_refused(rc, out, name):
    """Stopped in preflight, and the error itself (not only a loop label) names the variable."""
    assert_stopped_in_preflight(rc, out)
    errors = "\n".join(re.findall(r"^\[ERROR\].*$|^ +msg:.*(?:\n {6,}.*)*", out, re.M))
    assert name in errors, "%s not named in the errors:\n%s" % (name, errors or out)


GROUPS_WITH_FLOWER = {
    "brokers": ["bad-input-broker"],
    "celery_workers": ["bad-input-worker1"],
    "celery_beat": ["bad-input-beat"],
    "flower": ["bad-input-flower"],
}

CLUSTER_WIDE = [
    ("celery_install_dir", "/opt/celery" + PAYLOAD),
    ("celery_install_dir", "/opt/app " + SUBSHELL),
    ("celery_home", "/var/lib/celery;id"),
    ("celery_log_dir", "/var/log/" + BACKTICK),
    ("celery_run_dir", "/run/celery\nExecStartPre=/bin/touch /tmp/pwned"),
    ("celery_state_dir", "/var/lib/celery'" + PAYLOAD),
    ("celery_app_module", "proj; touch /tmp/pwned"),
    ("celery_user", "celery" + SUBSHELL),
    ("celery_group", "celery\nExecStartPre=/bin/touch /tmp/pwned"),
]


@pytest.mark.parametrize("name,value", CLUSTER_WIDE, ids=[n for n, _ in CLUSTER_WIDE])
def test_cluster_wide_values_cannot_carry_a_command(tmp_path, name, value):
    rc, out = run_site(tmp_path, all_vars={name: value})
    assert_refused(rc, out, name)


# (host, variable, value): values set on one host of the inventory.
PER_HOST = [
    ("bad-input-worker1", "celery_worker_pid_file", "/run/celery/%n.pid" + PAYLOAD),
    ("bad-input-worker1", "celery_worker_log_file", "/var/log/celery/%n" + SUBSHELL + ".log"),
    ("bad-input-worker1", "celery_worker_su_args", "-l; touch /tmp/pwned"),
    ("bad-input-worker1", "celery_worker_extra_opts", "--without-gossip " + BACKTICK),
    ("bad-input-worker1", "celery_worker_queues", ["celery", "x" + SUBSHELL]),
    ("bad-input-worker1", "celery_worker_loglevel", "INFO" + PAYLOAD),
    ("bad-input-worker1", "celery_worker_nodes", ["w1" + PAYLOAD]),
    ("bad-input-beat", "celery_beat_schedule_file", "/var/lib/celery/beat" + PAYLOAD),
    ("bad-input-beat", "celery_beat_log_file", "/var/log/celery/beat.log " + SUBSHELL),
    ("bad-input-beat", "celery_beat_extra_opts", "--max-interval=5 " + BACKTICK),
    ("bad-input-beat", "celery_beat_su_args", "-l" + PAYLOAD),
    ("bad-input-beat", "celery_beat_scheduler", "celery.beat:PersistentScheduler; touch /tmp/pwned"),
]


@pytest.mark.parametrize("host,name,value", PER_HOST, ids=[n for _, n, _ in PER_HOST])
def test_worker_and_beat_values_cannot_carry_a_command(tmp_path, host, name, value):
    rc, out = run_site(tmp_path, host_vars={host: {name: value}})
    assert_refused(rc, out, name)


FLOWER = [
    ("celery_flower_url_prefix", "flower" + PAYLOAD),
    ("celery_flower_user", "admin" + SUBSHELL),
    ("celery_flower_password", 'secret"\nExecStartPre=/bin/touch /tmp/pwned'),
]


@pytest.mark.parametrize("name,value", FLOWER, ids=[n for n, _ in FLOWER])
def test_flower_values_cannot_carry_a_command(tmp_path, name, value):
    rc, out = run_site(tmp_path, groups=GROUPS_WITH_FLOWER,
                       all_vars={"celery_flower_password": "good-password-123"},
                       host_vars={"bad-input-flower": {name: value}})
    assert_refused(rc, out, name)


def test_redis_password_cannot_add_a_directive(tmp_path):
    """A quote and a newline would end requirepass and add a directive to redis.conf."""
    value = 'secret"\nrename-command CONFIG ""\nrequirepass "'
    rc, out = run_site(tmp_path, all_vars={"vault_redis_broker_password": value})
    assert_refused(rc, out, "redis_broker_password")


def test_setting_name_cannot_carry_python(tmp_path):
    """Each extra setting becomes `name = <Python literal>` in the kit's settings module."""
    settings = {"import os; os.system('touch /tmp/pwned'); x": 1}
    rc, out = run_site(tmp_path, all_vars={"celery_app_extra_settings": settings})
    assert_refused(rc, out, "celery_app_extra_settings")


@pytest.mark.parametrize("environment, words", [
    ({"BAD NAME": "x"}, "'BAD NAME' is not a shell variable name"),
    ({"X;touch /tmp/pwned": "x"}, "is not a shell variable name"),
    ({"SECRET": "line one\nExecStartPre=/bin/touch /tmp/pwned"}, "celery_app_environment holds a newline or another control character (at celery_app_environment['SECRET'])"),
    ({"SECRET": "pasted\n"}, "celery_app_environment holds a newline or another control character (at celery_app_environment['SECRET'])"),
    ({"SECRET": " padded"}, "celery_app_environment.SECRET starts or ends with whitespace"),
    ({"PYTHONPATH": "/tmp"}, "celery_app_environment.PYTHONPATH: the kit sets PYTHONPATH itself"),
], ids=["space", "shell", "newline", "trailing-newline", "whitespace", "reserved"])
def test_environment_names_and_values_are_refused(tmp_path, environment, words):
    """A name goes unquoted into the environment file, which sh sources; a value is one line in
    double quotes, so a newline would start another assignment (or a systemd directive)."""
    rc, out = run_site(tmp_path, all_vars={"celery_app_environment": environment})
    assert_refused(rc, out, "celery_app_environment")
    assert words in out, out[-3000:]
