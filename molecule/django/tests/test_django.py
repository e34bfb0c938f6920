"""The Django sample (samples/django) released from git: beat's DatabaseScheduler and the results
in PostgreSQL, a new release rolled out while tasks are answered, releases that do not import or
whose workers fail refused, and a rollback. The tests run in this order; each release is a commit
of the sample's work tree (prepare.yml), tagged and pushed to the repository converge deployed from.
"""

import json
import os
import shlex
import subprocess
import time

from conftest import AS_CELERY, APP_DIR, VENV, host_of, hosts_in, playbook, run_client

EPHEMERAL = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
REPO = os.path.join(EPHEMERAL, "sample.git")
WORK = os.path.join(EPHEMERAL, "sample-work")
TASKS = os.path.join(WORK, "stamps", "tasks.py")
WORKERS = hosts_in("celery_workers")
CELERY_HOSTS = sorted(set(WORKERS + hosts_in("celery_beat")))
DB = host_of(hosts_in("databases")[0])
# The client's preamble: Django set up, as the result backend's models need it.
CLIENT = ("import json, os, sys, time\nimport django\ndjango.setup()\n"
          "from mysite.celery import app\n")


def git(*args):
    subprocess.run(["git", "-c", "user.name=kit", "-c", "user.email=kit@localhost"] + list(args),
                   cwd=WORK, check=True, capture_output=True, text=True)


def release_sample(tag, before=""):
    """Commit the sample of v1 with RELEASE = tag and the lines `before` ahead of its tasks, tag it
    and push it to the repository the inventory deploys from."""
    text = subprocess.run(["git", "show", "v1:stamps/tasks.py"], cwd=WORK, check=True, capture_output=True,
                          text=True).stdout
    text = text.replace('RELEASE = "v1"', "RELEASE = %r" % tag, 1)
    text = text.replace("import socket\n", "import socket\nimport sys\n\n" + before, 1)
    with open(TASKS, "w") as handle:
        handle.write(text)
    git("commit", "-qam", "Release %s" % tag)
    git("tag", "-f", tag)
    git("push", "-qf", REPO, "HEAD:refs/heads/main", tag)


def deploy(version, *args):
    source = {"celery_app_source": {"git": "file://" + REPO, "version": version}}
    return playbook("site.yml", "-e", json.dumps(source), *args)


def current(name):
    """The release id a host's `current` link points at."""
    return os.path.basename(host_of(name).run("readlink /opt/celery/current").stdout.strip())


def currents():
    return {name: current(name) for name in CELERY_HOSTS}


def stamps(count=12):
    """`count` stamp tasks through the deployed broker: the release and host that answered each."""
    code = CLIENT + (
        "rs = [app.send_task('stamps.tasks.stamp', args=['probe']) for _ in range(%d)]\n"
        "print(json.dumps([r.get(timeout=60) for r in rs]))\n" % count)
    return run_client(host_of(WORKERS[0]), code, timeout=150)


def releases_answering(count=12):
    return sorted({answer["release"] for answer in stamps(count)})


def main_pid(name, unit):
    return host_of(name).run("systemctl show -p MainPID --value %s" % unit).stdout.strip()


def test_every_host_runs_one_release_of_v1_migrated_once():
    ids = currents()
    assert len(set(ids.values())) == 1, ids
    release = next(iter(ids.values()))
    migrated = [name for name in CELERY_HOSTS
                if host_of(name).file("/opt/celery/releases/%s/.migrated" % release).exists]
    assert len(migrated) == 1, "migrate ran on %s for release %s, not on exactly one host" % (migrated, release)
    assert releases_answering() == ["v1"]


def test_a_periodic_task_made_through_the_orm_runs_without_a_beat_restart():
    """django-celery-beat's DatabaseScheduler picks up a PeriodicTask created through the ORM;
    the worker's result lands in PostgreSQL (django-celery-results)."""
    beat = hosts_in("celery_beat")[0]
    pid = main_pid(beat, "celerybeat")
    code = CLIENT + (
        "from django_celery_beat.models import IntervalSchedule, PeriodicTask\n"
        "every, _ = IntervalSchedule.objects.get_or_create(every=5, period=IntervalSchedule.SECONDS)\n"
        "PeriodicTask.objects.update_or_create(name='stamp-orm', defaults={\n"
        "    'interval': every, 'task': 'stamps.tasks.stamp', 'args': json.dumps(['orm'])})\n"
        "print(json.dumps(True))\n")
    assert run_client(host_of(WORKERS[0]), code)
    query = ("select count(*) from django_celery_results_taskresult "
             "where task_name = 'stamps.tasks.stamp' and status = 'SUCCESS' and result like '%\"orm\"%'")
    started, rows = time.time(), "0"
    while time.time() - started < 90:
        out = DB.run("runuser -u postgres -- psql -d celery -tAc %s" % shlex.quote(query))
        assert out.rc == 0, out.stderr
        rows = out.stdout.strip()
        if int(rows) >= 2:
            break
        time.sleep(2)
    print("\nperiodic task from the ORM: %s results in PostgreSQL after %.1f s" % (rows, time.time() - started))
    assert int(rows) >= 2, "the PeriodicTask made through the ORM did not run twice in 90 s"
    assert main_pid(beat, "celerybeat") == pid, "beat restarted"


def test_a_new_release_rolls_out_while_tasks_are_answered():
    before = currents()
    release_sample("v2")
    client = subprocess.Popen(
        ["docker", "exec", WORKERS[0], "sh", "-c", "rm -f /tmp/stop-client; cd %s && %s %s/bin/python -c %s" % (
            APP_DIR, AS_CELERY, VENV, shlex.quote(CLIENT + (
                "seen, errors, until = [], [], time.time() + 900\n"
                "while time.time() < until and not os.path.exists('/tmp/stop-client'):\n"
                "    try:\n"
                "        seen.append(app.send_task('stamps.tasks.version').get(timeout=60))\n"
                "    except Exception as exc:\n"
                "        errors.append(repr(exc))\n"
                "    time.sleep(0.2)\n"
                "print(json.dumps({'seen': seen, 'errors': errors}))\n")))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.time()
    try:
        run = deploy("v2")
        serving = time.time() - started
    finally:
        time.sleep(3)
        subprocess.run(["docker", "exec", WORKERS[0], "touch", "/tmp/stop-client"], check=False)
        out, err = client.communicate(timeout=120)
    assert run.returncode == 0, run.stdout[-6000:]
    print("\nv2 committed to every node serving it: %.1f s" % serving)
    report = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"seen": [], "errors": [err]}
    assert report["errors"] == [], report["errors"][:5]
    assert report["seen"] and set(report["seen"]) <= {"v1", "v2"} and report["seen"][-1] == "v2", report["seen"]
    after = currents()
    assert len(set(after.values())) == 1 and set(after.values()) != set(before.values()), (before, after)
    assert releases_answering() == ["v2"]
    release = next(iter(after.values()))
    assert sum(host_of(name).file("/opt/celery/releases/%s/.migrated" % release).exists for name in CELERY_HOSTS) == 1


def refused(tag, before_tasks, *words):
    """Release `tag` with these lines ahead of its tasks: the run fails saying `words`, no host
    switches, and v2 keeps answering."""
    before = currents()
    release_sample(tag, before=before_tasks)
    run = deploy(tag)
    assert run.returncode != 0
    assert all(word in run.stdout for word in words), run.stdout[-4000:]
    assert currents() == before
    assert releases_answering() == ["v2"]


def test_a_release_that_does_not_import_is_refused():
    refused("v3", 'raise ImportError("v3 does not import, on purpose")\n',
            "does not import on", "v3 does not import, on purpose")


def test_a_release_whose_workers_fail_is_switched_back():
    """v4 imports (the check passes) but its worker nodes fail to start: the first batch switches
    back to v2 and the run stops before the other hosts."""
    refused("v4", 'if "worker" in sys.argv:\n    raise RuntimeError("v4 fails in the worker")\n',
            "It runs release", "the hosts after it were not restarted")


def test_rollback_returns_to_the_previous_release():
    before = currents()
    run = playbook("playbooks/rollback.yml")
    assert run.returncode == 0, run.stdout[-6000:]
    after = currents()
    assert len(set(after.values())) == 1 and after != before, (before, after)
    assert releases_answering() == ["v1"]
    for name in WORKERS:
        host = host_of(name)
        pid = main_pid(name, "celery-worker@worker1")
        cwd = host.run("readlink /proc/%s/cwd" % pid).stdout.strip()
        assert cwd == "/opt/celery/releases/%s/app" % after[name], (name, cwd)
