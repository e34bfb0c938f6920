"""Filters for the beat schedule in celery_app_beat_schedule.

Each entry has a name, a task and exactly one schedule:
  every: 30                                   seconds (float allowed)
  crontab: {minute: "*/15", hour: 9-17, day_of_week: mon-fri, day_of_month: "*", month_of_year: "*"}
  solar: {event: sunset, latitude: 51.5, longitude: -0.12}
plus optional args (list), kwargs (dict) and options (dict, e.g. queue, expires, priority).
`schedule: <seconds>` is accepted as another name for `every`.
"""

import json
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


class FilterModule:
    def filters(self):
        return {
            "celery_app_schedule_problems": celery_app_schedule_problems,
            "celery_app_schedule": celery_app_schedule,
            "celery_app_schedule_uses": celery_app_schedule_uses,
        }
