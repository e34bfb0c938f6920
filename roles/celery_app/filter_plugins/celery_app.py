"""Filters for the beat schedule in celery_app_beat_schedule.

Each entry has a name, a task and exactly one schedule:
  every: 30                                   seconds (float allowed)
  crontab: {minute: "*/15", hour: 9-17, day_of_week: mon-fri, day_of_month: "*", month_of_year: "*"}
  solar: {event: sunset, latitude: 51.5, longitude: -0.12}
plus optional args (list), kwargs (dict) and options (dict, e.g. queue, expires, priority).
`schedule: <seconds>` is accepted as another name for `every`.
"""

import hashlib
import json
import os
import re

CRONTAB_FIELDS = {
    # field: (lowest, highest, names)
    "minute": (0, 59, {}),
    "hour": (0, 23, {}),
    "day_of_week": (0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
    "day_of_month": (1, 31, {}),
    "month_of_year": (1, 12, {m: i + 1 for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
}
SOLAR_EVENTS = ("dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon",
                "sunset", "dusk_civil", "dusk_nautical", "dusk_astronomical")
NAME = re.compile(r"^[A-Za-z0-9_.:-]+( [A-Za-z0-9_.:-]+)*$")
TASK = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
SCHEDULES = ("every", "crontab", "solar")


def _number(text, field):
    lo, hi, names = CRONTAB_FIELDS[field]
    text = text.lower()
    if text in names:
        return names[text]
    if not re.match(r"^[0-9]+$", text):
        raise ValueError("'%s' is not a number%s" % (text, " or a day/month name" if names else ""))
    n = int(text)
    # Celery accepts 7 for Sunday too.
    top = 7 if field == "day_of_week" else hi
    if n < lo or n > top:
        raise ValueError("%d is outside %d-%d" % (n, lo, hi))
    return n


def _crontab_field(value, field):
    """Raise ValueError when a crontab field is not one Celery accepts."""
    text = str(value).strip()
    if not text:
        raise ValueError("it is empty")
    for part in text.split(","):
        base, _, step = part.partition("/")
        if step and (not re.match(r"^[0-9]+$", step) or int(step) < 1):
            raise ValueError("step '%s' must be a whole number of at least 1" % step)
        if base == "*":
            continue
        first, dash, last = base.partition("-")
        a = _number(first, field)
        if dash:
            b = _number(last, field)
            if b < a:
                raise ValueError("range %s runs backwards" % base)


def _problems(entry, index):
    where = "celery_app_beat_schedule[%s]" % (
        entry.get("name") if isinstance(entry, dict) and entry.get("name") else index)
    if not isinstance(entry, dict):
        return ["%s must be a dict with name, task and one of every, crontab or solar." % where]
    p = []
    entry = _normalise(entry)
    if not isinstance(entry.get("name"), str) or not NAME.match(entry["name"]):
        p.append("%s: give a name of letters, digits, spaces and _.:-." % where)
    if not isinstance(entry.get("task"), str) or not TASK.match(entry["task"]):
        p.append("%s: task %r must be a dotted task name such as proj.tasks.add."
                 % (where, entry.get("task")))
    kinds = [k for k in SCHEDULES if k in entry]
    if len(kinds) != 1:
        p.append("%s: give exactly one of every (seconds), crontab or solar; it has %s."
                 % (where, ", ".join(kinds) or "none"))
    if "every" in entry:
        v = entry["every"]
        if isinstance(v, bool) or not re.match(r"^[0-9]+([.][0-9]+)?$", str(v)) or float(v) <= 0:
            p.append("%s.every is %r: give the interval in seconds, more than 0." % (where, v))
    if "crontab" in entry:
        cron = entry["crontab"]
        if not isinstance(cron, dict) or not cron:
            p.append("%s.crontab must be a dict of minute, hour, day_of_week, day_of_month, "
                     "month_of_year." % where)
        else:
            for field, value in cron.items():
                if field not in CRONTAB_FIELDS:
                    p.append("%s.crontab.%s is not a crontab field (use %s)."
                             % (where, field, ", ".join(CRONTAB_FIELDS)))
                    continue
                try:
                    _crontab_field(value, field)
                except ValueError as exc:
                    lo, hi, _ = CRONTAB_FIELDS[field]
                    p.append("%s.crontab.%s is %r: %s (allowed: %d-%d, *, ranges a-b, lists a,b "
                             "and steps */n)." % (where, field, value, exc, lo, hi))
    if "solar" in entry:
        sol = entry["solar"]
        if not isinstance(sol, dict):
            p.append("%s.solar must be a dict of event, latitude and longitude." % where)
        else:
            if sol.get("event") not in SOLAR_EVENTS:
                p.append("%s.solar.event is %r: use one of %s."
                         % (where, sol.get("event"), ", ".join(SOLAR_EVENTS)))
            for key, limit in (("latitude", 90), ("longitude", 180)):
                v = sol.get(key)
                try:
                    ok = not isinstance(v, bool) and -limit <= float(v) <= limit
                except (TypeError, ValueError):
                    ok = False
                if not ok:
                    p.append("%s.solar.%s is %r: give degrees from -%d to %d."
                             % (where, key, v, limit, limit))
    if not isinstance(entry.get("args", []), list):
        p.append("%s.args must be a list." % where)
    for key in ("kwargs", "options"):
        if not isinstance(entry.get(key, {}), dict):
            p.append("%s.%s must be a dict." % (where, key))
    return p


def _normalise(entry):
    entry = dict(entry)
    if "schedule" in entry and "every" not in entry:
        entry["every"] = entry.pop("schedule")
    return entry


def celery_app_schedule_problems(entries):
    """Messages for every bad beat schedule entry; empty when all are fine."""
    if not isinstance(entries, list):
        return ["celery_app_beat_schedule must be a list of entries, not %r." % (entries,)]
    p = []
    names = set()
    for i, entry in enumerate(entries):
        p.extend(_problems(entry, i))
        name = entry.get("name") if isinstance(entry, dict) else None
        if name in names:
            p.append("celery_app_beat_schedule: the name '%s' appears twice." % name)
        names.add(name)
    return p


def celery_app_schedule(entry):
    """The Python expression for an entry's schedule (in celeryconfig.py)."""
    entry = _normalise(entry)
    if "crontab" in entry:
        args = ", ".join("%s=%s" % (k, json.dumps(str(v))) for k, v in sorted(entry["crontab"].items()))
        return "crontab(%s)" % args
    if "solar" in entry:
        s = entry["solar"]
        return "solar(%s, %s, %s)" % (json.dumps(s["event"]), float(s["latitude"]), float(s["longitude"]))
    return repr(float(entry["every"]))


def celery_app_schedule_uses(entries, kind):
    """Whether any entry uses this kind of schedule (every, crontab, solar)."""
    return any(kind in _normalise(e) for e in entries or [] if isinstance(e, dict))


def _plain(value, where):
    """The value as plain Python data (bool, None, int, float, str, list, dict), or ValueError
    naming where in it a value is of another kind."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("%s is %r, which has no Python literal" % (where, value))
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise ValueError("%s has a key of type %s" % (where, type(k).__name__))
            out[_plain(k, where)] = _plain(v, "%s[%r]" % (where, k))
        return out
    raise ValueError("%s is of type %s; give a string, number, boolean, null, list or mapping"
                     % (where, type(value).__name__))


def celery_app_python(value):
    """A Python literal for an inventory value (celery_app_extra_settings): True, False and None,
    numbers, strings, lists and nested dicts, as Python reads them back with ast.literal_eval."""
    return repr(_plain(value, "the value"))


def celery_app_setting_problems(settings):
    """Messages for extra settings whose values have no Python literal; empty when all have."""
    if not isinstance(settings, dict):
        return []
    problems = []
    for name, value in sorted(settings.items(), key=lambda item: str(item[0])):
        try:
            _plain(value, "celery_app_extra_settings.%s" % name)
        except ValueError as exc:
            problems.append("%s." % exc)
    return problems


def celery_app_quorum_problems(settings):
    """With a RabbitMQ cluster (quorum queues): messages for extra settings that cannot work with
    them, or undo what the kit sets for them; empty when none does."""
    if not isinstance(settings, dict):
        return []
    problems = []
    if settings.get("task_queue_max_priority") is not None or "x-max-priority" in json.dumps(settings, default=str):
        problems.append("celery_app_extra_settings asks for queue priorities (task_queue_max_priority or "
                        "x-max-priority), which quorum queues refuse: remove it")
    for name in ("task_default_queue_type", "task_create_missing_queue_type"):
        if name in settings and settings[name] != "quorum":
            problems.append("celery_app_extra_settings.%s is %r: the cluster's queues must be quorum queues, or a "
                            "node's loss loses their tasks; remove it" % (name, settings[name]))
    if settings.get("worker_detect_quorum_queues", True) is not True:
        problems.append("celery_app_extra_settings.worker_detect_quorum_queues is off: workers would ask for a "
                        "global prefetch, which quorum queues refuse; remove it")
    options = settings.get("broker_transport_options")
    if options is not None and not (isinstance(options, dict) and options.get("confirm_publish") is True):
        problems.append("celery_app_extra_settings.broker_transport_options replaces the kit's, without "
                        "confirm_publish: true, and a task would count as sent before a majority of the nodes "
                        "holds it; add confirm_publish: true to it")
    return problems


# The environment file (celery_app_environment) is read by systemd (EnvironmentFile=) and by the
# init.d scripts (sh, `set -a; . FILE`). Each value goes between double quotes with \\, ", $ and `
# escaped by a backslash, which both read back as the value (checked on Debian 12 and 13's
# systemd); in single quotes systemd still reads backslash escapes and sh does not.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def celery_app_env_line(item):
    """NAME="value" for one (name, value) pair of celery_app_environment."""
    name, value = item
    text = str(value)
    for char in ("\\", '"', "$", "`"):
        text = text.replace(char, "\\" + char)
    return '%s="%s"' % (name, text)


def celery_app_env_problems(environment, reserved=()):
    """Messages for names that are not shell-safe or that the kit sets itself, and for values that
    are not one line of printable text; empty when all are fine. Values are never quoted back."""
    if not isinstance(environment, dict):
        return ["celery_app_environment must be a mapping of variable names to values."]
    problems = []
    for name, value in sorted(environment.items(), key=lambda item: str(item[0])):
        if not isinstance(name, str) or not ENV_NAME.match(name):
            problems.append("celery_app_environment: the name %r is not a shell variable name (letters, digits "
                            "and _, not starting with a digit)." % (name,))
            continue
        if name in reserved:
            problems.append("celery_app_environment.%s: the kit sets %s itself; remove it." % (name, name))
        if isinstance(value, (dict, list)) or value is None:
            problems.append("celery_app_environment.%s must be a string or a number." % name)
            continue
        text = str(value)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            problems.append("celery_app_environment.%s holds a newline or another control character: an "
                            "environment file holds one line per variable." % name)
        elif text != text.strip():
            problems.append("celery_app_environment.%s starts or ends with whitespace: remove it (a pasted "
                            "secret often ends with a newline)." % name)
    return problems


# --- the app's source and its release ------------------------------------------------------------

SOURCE_KINDS = ("folder", "git", "dist", "requirement")
# What a folder or checkout holds that is no part of the app.
SKIPPED = {".git", "__pycache__", ".venv", ".tox", ".mypy_cache", ".pytest_cache", "node_modules"}


def celery_app_source_kind(source):
    """The source as a dict with `kind` (folder, git, dist or requirement) and its keys; a plain
    string is a folder."""
    if isinstance(source, str):
        return {"kind": "folder", "folder": source}
    if not isinstance(source, dict):
        return {"kind": None}
    kinds = [k for k in SOURCE_KINDS if k in source]
    out = dict(source)
    out["kind"] = kinds[0] if len(kinds) == 1 else None
    return out


def celery_app_source_problems(source):
    """Messages for a source the kit cannot build from, checked on the controller; empty when
    it can."""
    src = celery_app_source_kind(source)
    kind = src["kind"]
    if kind is None:
        return ["celery_app_source must be a folder on the controller, or a mapping with one of %s "
                "(for example {git: https://git.example.com/app.git, version: v1.2.0}), not %r."
                % (", ".join(SOURCE_KINDS), source)]
    extra = sorted(set(src) - {"kind", kind, "version"})
    if extra or ("version" in src and kind != "git"):
        return ["celery_app_source has keys the kit does not know for a %s source: %s."
                % (kind, ", ".join(extra or ["version"]))]
    value = src[kind]
    if not isinstance(value, str) or not value.strip():
        return ["celery_app_source.%s must be a non-empty string." % kind]
    if kind == "git":
        version = src.get("version")
        if version is None or not str(version).strip():
            return ["celery_app_source.git (%s) has no version: set celery_app_source.version to the tag, branch "
                    "or commit to deploy, so that every run deploys what you chose." % value]
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/@+-]*$", str(version)) or ".." in str(version):
            return ["celery_app_source.version is %r: give a tag, branch or commit name." % version]
    if kind == "folder" and not os.path.isdir(value):
        return ["celery_app_source is %r, which is not a folder on the controller." % value]
    if kind == "dist":
        if not re.search(r"(\.whl|\.tar\.gz|\.zip)$", value):
            return ["celery_app_source.dist is %r: give a wheel (.whl) or an sdist (.tar.gz) file." % value]
        if not os.path.isfile(value):
            return ["celery_app_source.dist is %r, which is not a file on the controller." % value]
    if kind == "requirement" and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?"
                                              r"\s*(==|===|~=|>=|<=|>|<|!=)\s*[A-Za-z0-9.*+!_-]+$", value):
        return ["celery_app_source.requirement is %r: give one pinned requirement such as myapp==1.4.2." % value]
    return []


def _tree_digest(path):
    digest = hashlib.sha1()
    for top, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED)
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            full = os.path.join(top, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            digest.update(b"x" if os.access(full, os.X_OK) else b"-")
            with open(full, "rb") as handle:
                digest.update(hashlib.sha1(handle.read()).digest())
    return digest.hexdigest()


def celery_app_platform(facts):
    """What a release's wheels are built for, from a host's facts: its Python's full version
    (requirements may have markers on it) and its machine type."""
    version = (facts or {}).get("python", {}).get("version", {})
    return "python %s.%s.%s %s" % (version.get("major"), version.get("minor"), version.get("micro"),
                                   (facts or {}).get("architecture"))


def celery_app_release_id(source, requirements, commit="", platform=""):
    """A release's id: 12 hex digits of what goes into it, the source (a folder's files, a git
    commit, a distribution file's bytes, a requirement), the kit's requirements and the platform
    its wheels are built for. The same source, requirements and platform make the same release,
    so an unchanged run builds nothing."""
    src = celery_app_source_kind(source)
    if src["kind"] == "folder":
        what = _tree_digest(src["folder"])
    elif src["kind"] == "git":
        what = str(commit)
    elif src["kind"] == "dist":
        with open(src["dist"], "rb") as handle:
            what = hashlib.sha1(handle.read()).hexdigest() + os.path.basename(src["dist"])
    else:
        what = str(src.get("requirement"))
    return hashlib.sha1(json.dumps([src["kind"], what, list(requirements), platform]).encode()).hexdigest()[:12]


class FilterModule:
    def filters(self):
        return {
            "celery_app_schedule_problems": celery_app_schedule_problems,
            "celery_app_schedule": celery_app_schedule,
            "celery_app_schedule_uses": celery_app_schedule_uses,
            "celery_app_python": celery_app_python,
            "celery_app_setting_problems": celery_app_setting_problems,
            "celery_app_quorum_problems": celery_app_quorum_problems,
            "celery_app_env_line": celery_app_env_line,
            "celery_app_env_problems": celery_app_env_problems,
            "celery_app_source_kind": celery_app_source_kind,
            "celery_app_source_problems": celery_app_source_problems,
            "celery_app_release_id": celery_app_release_id,
            "celery_app_platform": celery_app_platform,
        }
