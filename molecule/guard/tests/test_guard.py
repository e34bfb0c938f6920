"""Guard rails on real hosts: bad inventories change no file, hostile values run no command,
no secret reaches a -vvv log, the units score as promised on `systemd-analyze security`, the
brokers are locked down, and check mode changes nothing."""

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse

import pytest

from conftest import IMPORT_APP, host_of, hosts_in, inventory_vars, run_client

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
ALL = hosts_in("all")
NODE1, NODE2 = "celery-grd-node1", "celery-grd-node2"
RESULTS = hosts_in("result_backends")[0]
SECRETS = ["vault_rabbitmq_broker_password", "vault_redis_results_password", "vault_redis_results_kit_password",
           "vault_celery_flower_password", "vault_app_api_key"]
# Files the kit writes and the places it installs to: none may change on a refused run.
WATCHED = "/etc /opt/celery"


def env():
    return dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_CACHE_PLUGIN="memory",
                ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")


def playbook(*args):
    proc = subprocess.run(["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"]] + list(args),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1200)
    return proc.returncode, proc.stdout + proc.stderr


def fingerprints():
    """sha256 of every file under WATCHED, per host."""
    out = {}
    for name in ALL:
        res = host_of(name).run(
            "find %s -xdev -type f -print0 | sort -z | xargs -0 sha256sum" % WATCHED)
        assert res.rc == 0, res.stderr
        out[name] = dict(reversed(line.split("  ", 1)) for line in res.stdout.splitlines())
    return out


def changed_files(before, after):
    diffs = []
    for name in ALL:
        for path in sorted(set(before[name]) | set(after[name])):
            if before[name].get(path) != after[name].get(path):
                diffs.append("%s:%s" % (name, path))
    return diffs


# The long-running units (not the watchdog's, which its timer starts and stops).
SERVICES = "'celery-worker@*' celerybeat.service celery-flower.service rabbitmq-server redis-server"


def main_pids():
    out = {}
    for name in ALL:
        res = host_of(name).run(
            "systemctl show -p MainPID --value %s 2>/dev/null; "
            "systemctl list-units --plain --no-legend %s" % (SERVICES, SERVICES))
        out[name] = res.stdout
    return out


def secrets():
    values = {name: inventory_vars(NODE1)[name] for name in SECRETS}
    assert all(values.values())
    return values


# --- bad input and quoting, against these hosts ----------------------------------------------

def test_bad_inputs_are_refused_and_change_no_file_on_any_host():
    """tests/test_bad_input.py and tests/test_quoting.py, with their inventories pointing at
    this scenario's hosts: every case stops in preflight, and every file under /etc and
    /opt/celery on every host has the same checksum afterwards."""
    before = fingerprints()
    hosts = {"bad-input-broker": "celery-grd-rabbit", "bad-input-worker1": NODE1,
             "bad-input-worker2": NODE2, "bad-input-beat": NODE1, "bad-input-beat2": NODE2,
             "bad-input-flower": NODE2}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_bad_input.py", "tests/test_quoting.py"],
        # PYTEST_ADDOPTS cleared: ./kit points it at this verify step's own JUnit report.
        cwd=ROOT, env=dict(env(), KIT_BAD_INPUT_HOSTS=json.dumps(hosts), PYTEST_ADDOPTS=""),
        capture_output=True, text=True, timeout=1800)
    summary = proc.stdout.strip().splitlines()[-1]
    print("bad-input suite against real hosts: %s" % summary)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 25, summary
    assert changed_files(before, fingerprints()) == []


@pytest.mark.parametrize("name", ALL)
def test_no_hostile_value_ran_a_command(name):
    """The passwords hold $(touch /tmp/pwned) and `id`; a beat entry's name holds Python."""
    assert not host_of(name).file("/tmp/pwned").exists


def test_hostile_task_arguments_stay_data():
    """beat sends proj.tasks.add with an argument holding Python code; a worker adds it."""
    assert "Sending due task hostile-args (proj.tasks.add)" in host_of(NODE1).file(
        "/var/log/celery/beat.log").content_string
    res = host_of(NODE1).run("grep -h 'succeeded' /var/log/celery/*.log; true")
    res2 = host_of(NODE2).run("grep -h 'succeeded' /var/log/celery/*.log; true")
    assert "import os; os.system(" in res.stdout + res2.stdout


# --- secrets --------------------------------------------------------------------------------

def test_no_secret_in_the_verbose_converge_log():
    """`./kit molecule guard` converged at -vvv into GUARD_CONVERGE_LOG; no password, in any of
    the forms it takes in a URL or a config file, appears in it."""
    path = os.environ.get("GUARD_CONVERGE_LOG", "")
    if not os.path.exists(path):
        # Run by hand (molecule verify -s guard): a full -vvv run of site.yml instead.
        rc, log = playbook("-vvv", os.path.join(ROOT, "site.yml"))
        assert rc == 0, log[-4000:]
    else:
        log = open(path, encoding="utf-8", errors="replace").read()
    assert "TASK [" in log and len(log) > 100000, "the log is not a -vvv converge"
    print("-vvv converge log: %d lines, %d bytes" % (log.count("\n"), len(log)))
    for name, value in secrets().items():
        for form in {value, urllib.parse.quote(value, safe=""), urllib.parse.quote(value), json.dumps(value)[1:-1]}:
            assert form not in log, "%s appears in the -vvv log (as %r)" % (name, form)


# Each file holding a secret: its owner, and the groups that may read it.
SECRET_FILES = [
    (NODE1, "/opt/celery/kit/celery_kit/config.py", "root", "celery"),
    (NODE2, "/opt/celery/kit/celery_kit/config.py", "root", "celery"),
    (NODE2, "/etc/default/celery-flower", "root", "root"),
    (NODE1, "/etc/celery-kit/environment", "root", "celery"),
    (NODE2, "/etc/celery-kit/environment", "root", "celery"),
    # The kit's Redis user, read by systemd for the drop-in that pauses Redis's clients before it stops.
    (RESULTS, "/etc/redis/celery-kit-stop.env", "root", "root"),
]


def written_forms(value):
    """How a secret may stand in a file: as it is, URL-quoted, double-quoted for systemd, or in the
    app's environment file (backslash, quote, $ and backtick escaped)."""
    env = value
    for char in ("\\", '"', "$", "`"):
        env = env.replace(char, "\\" + char)
    return {value, urllib.parse.quote(value, safe=""), value.replace("$", "\\$").replace("`", "\\`"), env}


@pytest.mark.parametrize("name,path,owner,group", SECRET_FILES)
def test_files_holding_secrets_are_0640_or_tighter(name, path, owner, group):
    f = host_of(name).file(path)
    assert (f.user, f.group) == (owner, group)
    assert f.mode & 0o137 == 0, oct(f.mode)
    assert any(form in f.content_string for v in secrets().values() for form in written_forms(v)), \
        "expected a secret in %s" % path


def test_redis_files_hold_no_password_in_clear():
    """redis.conf has none, and users.acl only each password's SHA-256."""
    for path in ("/etc/redis/redis.conf", "/etc/redis/users.acl"):
        content = host_of(RESULTS).file(path).content_string
        assert not any(form in content for v in secrets().values() for form in written_forms(v)), path
    assert hashlib.sha256(secrets()["vault_redis_results_password"].encode()).hexdigest() in \
        host_of(RESULTS).file("/etc/redis/users.acl").content_string


# --- exposure scores ------------------------------------------------------------------------

def exposure(name, unit):
    res = host_of(name).run("systemd-analyze security --no-pager %s" % unit)
    assert res.rc == 0, res.stderr
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", res.stdout)
    assert match, res.stdout[-2000:]
    return float(match.group(1))


def units(name):
    """The kit's running services on a host (not the watchdog's, a timer's short oneshot)."""
    res = host_of(name).run("systemctl list-units --plain --no-legend --state=running 'celery*.service'")
    return sorted(u for u in (line.split()[0] for line in res.stdout.splitlines()) if not u.startswith("celery-watchdog@"))


def test_celery_units_score_at_most_1_1_by_default():
    found = units(NODE1)
    assert "celerybeat.service" in found and len(found) == 3, found
    scores = {unit: exposure(NODE1, unit) for unit in found}
    print("systemd-analyze security on %s (defaults): %s" % (NODE1, scores))
    assert max(scores.values()) <= 1.1, scores


def test_celery_units_score_below_1_0_with_the_allow_list_and_root_directory():
    """The allow-list alone takes them to 1.0 (0.93 before rounding); their own root directory
    (celery_unit_chroot) to 0.9."""
    found = [u for u in units(NODE2) if u.startswith("celery-worker@")]
    assert len(found) == 2, found
    scores = {unit: exposure(NODE2, unit) for unit in found}
    print("systemd-analyze security on %s (allow-list and root directory): %s" % (NODE2, scores))
    assert max(scores.values()) < 1.0, scores


def test_print_the_other_units_scores():
    """Reported, not asserted: Flower, RabbitMQ with the kit's drop-in, Debian's Redis unit."""
    print("systemd-analyze security: celery-flower %.1f, rabbitmq-server %.1f, redis-server %.1f" % (
        exposure(NODE2, "celery-flower.service"), exposure("celery-grd-rabbit", "rabbitmq-server.service"),
        exposure(RESULTS, "redis-server.service")))


# --- the Redis result backend is locked down ------------------------------------------------

def redis_reply(name, command):
    code = ("import socket; s = socket.create_connection(('10.231.231.11', 6379), 5); "
            "s.sendall(%r); print(s.recv(200).decode())" % (command.encode() + b"\r\n"))
    res = host_of(name).run("python3 -c %s" % json.dumps(code))
    assert res.rc == 0, res.stderr
    return res.stdout.strip()


def test_redis_refuses_unauthenticated_commands():
    assert redis_reply(NODE1, "PING").startswith("-NOAUTH"), "PING without AUTH was answered"
    assert redis_reply(NODE1, "AUTH wrong-password").startswith("-WRONGPASS")


def test_redis_listens_on_its_address_and_loopback_only():
    res = host_of(RESULTS).run("ss -Hltn 'sport = :6379'")
    listening = sorted(line.split()[3] for line in res.stdout.splitlines())
    assert listening == sorted(["127.0.0.1:6379", "10.231.231.11:6379"]), listening


def test_redis_pauses_its_clients_before_it_stops():
    """The drop-in's redis-cli logs in with the hostile password (from its systemd environment
    file) and pauses the clients before systemd's SIGTERM."""
    host = host_of(RESULTS)
    since = host.run("date +%s").stdout.strip()
    assert host.run("systemctl restart redis-server").rc == 0
    journal = host.run("journalctl --no-pager -o cat -u redis-server --since @%s" % since).stdout
    assert "OK" in journal.splitlines() and "ERR" not in journal and "AUTH" not in journal, journal


# --- check mode -----------------------------------------------------------------------------

def recap_changed(out):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.M)}


def changed_tasks(out):
    """Each task that reported a change, with the hosts it changed: what to look at first."""
    found, task = [], None
    for line in out.splitlines():
        if line.startswith("TASK ["):
            task = line.rstrip(" *")
        elif line.startswith("changed: [") and task:
            found.append("%s: %s" % (task, line))
    return found


def test_an_account_the_kit_did_not_make_is_refused_before_the_host_changes():
    """An account the host has already, here a service's made by useradd, passes the name checks
    of preflight; the packages play refuses it before any file changes."""
    node = host_of(NODE1)
    assert node.run("useradd --system --home-dir /srv/other --shell /bin/sh appsvc").rc == 0
    try:
        before = fingerprints()
        rc, out = playbook(os.path.join(ROOT, "site.yml"), "-e", "celery_user=appsvc", "-e", "celery_group=appsvc")
        assert rc != 0
        assert "already has the account appsvc (home /srv/other, shell /bin/sh), which the kit did not make" \
            in " ".join(out.split()), out[-3000:]
        assert changed_files(before, fingerprints()) == []
    finally:
        node.run("userdel appsvc")


def test_the_redis_config_test_refuses_what_redis_refuses():
    """The script that tests a new redis.conf before it is written (redis_broker's
    files/redis-config-test) passes the host's own file and fails one with a directive Redis
    does not know, with Redis's words, while the running Redis goes on."""
    redis = host_of(RESULTS)
    command = "/usr/local/sbin/celery-kit-redis-config-test %s"
    pid = redis.run("systemctl show -p MainPID --value redis-server").stdout
    redis.run("cp -p /etc/redis/redis.conf /tmp/good.conf && cp -p /tmp/good.conf /tmp/bad.conf"
              " && echo 'maxmemory-policy sometimes' >> /tmp/bad.conf")
    try:
        good = redis.run(command.replace("%s", "/tmp/good.conf"))
        bad = redis.run(command.replace("%s", "/tmp/bad.conf"))
    finally:
        redis.run("rm -f /tmp/good.conf /tmp/bad.conf")
    assert good.rc == 0, good.stderr
    assert bad.rc == 1 and "maxmemory-policy sometimes" in bad.stderr, (bad.rc, bad.stderr)
    assert redis.run("systemctl show -p MainPID --value redis-server").stdout == pid


def test_a_redis_config_that_does_not_start_leaves_the_old_one_running(tmp_path):
    """An address the Redis host does not have passes every check on the controller and the
    throwaway Redis that tests a new redis.conf (it listens on a socket only); the restart fails,
    the previous redis.conf is put back and runs, and results still reach it."""
    redis = host_of(RESULTS)
    before = fingerprints()
    play = tmp_path / "redis.yml"
    play.write_text("- hosts: result_backends\n  roles: [redis_broker]\n")
    rc, out = playbook(str(play), "-e", "redis_broker_bind_address=10.231.231.99")
    assert rc != 0
    said = " ".join(out.split())
    assert "did not come back on the new redis.conf" in said, out[-3000:]
    assert "the previous redis.conf is back and Redis runs it" in said, out[-3000:]
    assert changed_files(before, fingerprints()) == []
    assert redis.service("redis-server").is_running
    code = ("import json; %s; print(json.dumps(app.send_task('proj.tasks.add', args=(2, 3)).get(timeout=60)))"
            % IMPORT_APP)
    assert run_client(host_of(NODE1), code) == 5


def test_a_crash_looping_beat_fails_the_run():
    """A scheduler class that does not exist passes the controller (it is a class path); beat
    starts, fails and is restarted by systemd, and the run fails with beat's journal instead of
    ending "ok". Beat's previous /etc/default/celerybeat is put back and beat runs on it again,
    with no copy left behind; the next run with the inventory's own settings changes nothing."""
    site = os.path.join(ROOT, "site.yml")
    beat = host_of(hosts_in("celery_beat")[0])
    before = beat.file("/etc/default/celerybeat").sha256sum
    try:
        rc, out = playbook(site, "--tags", "beat", "-e", "celery_beat_scheduler=proj.tasks.NoSuchScheduler")
        assert rc != 0
        said = " ".join(out.split())
        assert re.search(r"celerybeat\.service on \S+ did not stay up after this run started it", said), out[-3000:]
        assert "What it ran with before this run is back (/etc/default/celerybeat), and it was started on it again" in said, out[-3000:]
        assert "Its journal:" in said, out[-3000:]
        assert beat.file("/etc/default/celerybeat").sha256sum == before
        assert beat.run("ls /etc/default /etc/systemd/system | grep '~$'").stdout == ""
        show = "systemctl show -p ActiveState -p MainPID -p NRestarts celerybeat"
        state = beat.check_output(show)
        time.sleep(5)  # longer than systemd's RestartSec: a beat that crash-loops is seen
        assert beat.check_output(show) == state and "ActiveState=active" in state, state
    finally:
        rc, out = playbook(site, "--tags", "beat")
        assert rc == 0, out[-3000:]


def test_check_mode_on_the_converged_cluster_reports_no_change():
    rc, out = playbook("--check", "--diff", os.path.join(ROOT, "site.yml"))
    assert rc == 0, out[-6000:]
    changed = recap_changed(out)
    assert set(changed) == set(ALL) and not any(changed.values()), (changed, changed_tasks(out), out[-3000:])


def test_check_mode_after_an_edit_shows_the_diff_and_changes_nothing(tmp_path):
    edit = tmp_path / "edit.yml"
    edit.write_text(json.dumps({"all": {"hosts": {NODE2: {"celery_worker_concurrency": 3}}}}))
    before, pids = fingerprints(), main_pids()
    rc, out = playbook("-i", str(edit), "--check", "--diff", os.path.join(ROOT, "site.yml"))
    assert rc == 0, out[-6000:]
    assert re.search(r"^\+CELERYD_OPTS=.*--concurrency=3", out, re.M), out[-6000:]
    changed = recap_changed(out)
    assert changed[NODE2] > 0 and changed[NODE1] == 0, (changed, changed_tasks(out))
    assert changed_files(before, fingerprints()) == []
    assert main_pids() == pids
