"""roles/celery_app/filter_plugins/celery_app.py, called directly: the checks of
celery_app_beat_schedule (preflight) and the schedule expressions written into celeryconfig.py."""

import ast

import pytest


def entry(**schedule):
    return dict({"name": "r", "task": "proj.tasks.add"}, **schedule)


# --- celery_app_schedule_problems -------------------------------------------------------------

def test_the_role_default_schedule_is_fine(app):
    assert app.celery_app_schedule_problems([{"name": "heartbeat", "task": "proj.tasks.heartbeat", "every": 30}]) == []


def test_an_empty_schedule_is_fine(app):
    assert app.celery_app_schedule_problems([]) == []


@pytest.mark.parametrize("entries", [{"name": "r", "task": "proj.tasks.add", "every": 5}, None, "heartbeat"])
def test_a_schedule_that_is_not_a_list(app, entries):
    assert app.celery_app_schedule_problems(entries) == [
        "celery_app_beat_schedule must be a list of entries, not %r." % (entries,)]


def test_an_entry_that_is_not_a_dict_is_named_by_its_index(app):
    assert app.celery_app_schedule_problems([entry(every=5), "heartbeat"]) == [
        "celery_app_beat_schedule[1] must be a dict with name, task and one of every, crontab or solar."]


def test_a_bad_entry_without_a_name_is_named_by_its_index(app):
    assert app.celery_app_schedule_problems([{"task": "proj.tasks.add", "every": 5}]) == [
        "celery_app_beat_schedule[0]: give a name of letters, digits, spaces and _.:-."]


@pytest.mark.parametrize("name", ["heartbeat", "nightly report", "a.b:c-d_1"])
def test_good_names(app, name):
    assert app.celery_app_schedule_problems([dict(entry(every=5), name=name)]) == []


@pytest.mark.parametrize("name", ["two  spaces", " leading", "a;b", 'say "hi"', 5])
def test_bad_names(app, name):
    (problem,) = app.celery_app_schedule_problems([dict(entry(every=5), name=name)])
    assert problem.endswith(": give a name of letters, digits, spaces and _.:-.")


def test_a_name_twice(app):
    assert app.celery_app_schedule_problems([entry(every=5), entry(every=6)]) == [
        "celery_app_beat_schedule: the name 'r' appears twice."]


@pytest.mark.parametrize("task", ["add", "proj.tasks.add()", "proj..add", "1proj.add", "proj.tasks.add; id", None])
def test_bad_task_names(app, task):
    assert app.celery_app_schedule_problems([dict(entry(every=5), task=task)]) == [
        "celery_app_beat_schedule[r]: task %r must be a dotted task name such as proj.tasks.add." % (task,)]


@pytest.mark.parametrize("schedule, kinds", [
    ({}, "none"),
    ({"every": 5, "crontab": {"minute": 1}}, "every, crontab"),
    ({"every": 5, "crontab": {"minute": 1}, "solar": {"event": "sunset", "latitude": 0, "longitude": 0}},
     "every, crontab, solar"),
])
def test_exactly_one_kind_of_schedule(app, schedule, kinds):
    assert app.celery_app_schedule_problems([entry(**schedule)]) == [
        "celery_app_beat_schedule[r]: give exactly one of every (seconds), crontab or solar; it has %s." % kinds]


@pytest.mark.parametrize("every", [30, "30", 0.5, "0.5", 86400])
def test_good_intervals(app, every):
    assert app.celery_app_schedule_problems([entry(every=every)]) == []


@pytest.mark.parametrize("every", [0, "0", 0.0, -1, "ten", "1e3", True, None, ""])
def test_bad_intervals(app, every):
    assert app.celery_app_schedule_problems([entry(every=every)]) == [
        "celery_app_beat_schedule[r].every is %r: give the interval in seconds, more than 0." % (every,)]


def test_schedule_is_another_name_for_every(app):
    assert app.celery_app_schedule_problems([entry(schedule=10)]) == []
    assert app.celery_app_schedule_problems([entry(schedule=0)]) == [
        "celery_app_beat_schedule[r].every is 0: give the interval in seconds, more than 0."]


# Crontab fields Celery accepts; each is also checked against Celery itself below.
GOOD_CRONTABS = [
    {"minute": "*/15", "hour": "9-17", "day_of_week": "mon-fri", "day_of_month": "*", "month_of_year": "*"},
    {"minute": 0},
    {"minute": "0,30"},
    {"minute": "59"},
    {"minute": "1-5/2"},
    {"hour": "0-23/6"},
    {"day_of_week": "SUN"},
    {"day_of_week": "0,6"},
    {"day_of_week": "sun,sat"},
    {"day_of_month": "1-31/10"},
    {"month_of_year": "jan-mar"},
    {"month_of_year": "12"},
]


@pytest.mark.parametrize("crontab", GOOD_CRONTABS)
def test_good_crontabs(app, crontab):
    assert app.celery_app_schedule_problems([entry(crontab=crontab)]) == []


@pytest.mark.parametrize("field, value, why", [
    ("minute", 60, "60 is outside 0-59 (allowed: 0-59,"),
    ("minute", "-1", "'' is not a number"),
    ("minute", "*/0", "step '0' must be a whole number of at least 1"),
    ("minute", "*/x", "step 'x' must be a whole number of at least 1"),
    ("minute", "", "it is empty"),
    ("minute", "0,,30", "'' is not a number"),
    ("minute", "mon", "'mon' is not a number (allowed"),
    ("hour", "9-25", "25 is outside 0-23"),
    ("hour", "17-9", "range 17-9 runs backwards"),
    ("day_of_week", "funday", "'funday' is not a number or a day/month name"),
    ("day_of_week", 8, "8 is outside 0-6"),
    ("day_of_month", 0, "0 is outside 1-31"),
    ("month_of_year", 13, "13 is outside 1-12"),
    ("month_of_year", "jan-foo", "'foo' is not a number or a day/month name"),
    ("minute", [0, 30], "'[0' is not a number"),
])
def test_bad_crontab_fields(app, field, value, why):
    (problem,) = app.celery_app_schedule_problems([entry(crontab={field: value})])
    assert problem.startswith("celery_app_beat_schedule[r].crontab.%s is %r: %s" % (field, value, why)), problem
    assert problem.endswith("ranges a-b, lists a,b and steps */n).")


def test_an_unknown_crontab_field(app):
    assert app.celery_app_schedule_problems([entry(crontab={"minutes": 5})]) == [
        "celery_app_beat_schedule[r].crontab.minutes is not a crontab field (use minute, hour, day_of_week, "
        "day_of_month, month_of_year)."]


@pytest.mark.parametrize("crontab", [{}, "*/15 * * * *", None])
def test_a_crontab_that_is_not_a_dict_of_fields(app, crontab):
    assert app.celery_app_schedule_problems([entry(crontab=crontab)]) == [
        "celery_app_beat_schedule[r].crontab must be a dict of minute, hour, day_of_week, day_of_month, month_of_year."]


@pytest.mark.parametrize("solar", [
    {"event": "sunset", "latitude": 51.5, "longitude": -0.12},
    {"event": "dawn_astronomical", "latitude": "-90", "longitude": "180"},
    {"event": "solar_noon", "latitude": 0, "longitude": -180.0},
])
def test_good_solar(app, solar):
    assert app.celery_app_schedule_problems([entry(solar=solar)]) == []


@pytest.mark.parametrize("solar, problem", [
    ({"event": "moonrise", "latitude": 1, "longitude": 2}, ".solar.event is 'moonrise': use one of dawn_astronomical"),
    ({"latitude": 1, "longitude": 2}, ".solar.event is None: use one of"),
    ({"event": "sunset", "latitude": 91, "longitude": 0}, ".solar.latitude is 91: give degrees from -90 to 90."),
    ({"event": "sunset", "latitude": 0, "longitude": -180.5}, ".solar.longitude is -180.5: give degrees from -180 to 180."),
    ({"event": "sunset", "latitude": "north", "longitude": 0}, ".solar.latitude is 'north'"),
    ({"event": "sunset", "latitude": True, "longitude": 0}, ".solar.latitude is True"),
    ({"event": "sunset", "latitude": "nan", "longitude": 0}, ".solar.latitude is 'nan'"),
    ({"event": "sunset", "longitude": 0}, ".solar.latitude is None"),
    ("sunset", ".solar must be a dict of event, latitude and longitude."),
])
def test_bad_solar(app, solar, problem):
    (got,) = app.celery_app_schedule_problems([entry(solar=solar)])
    assert got.startswith("celery_app_beat_schedule[r]" + problem), got


@pytest.mark.parametrize("key, value, problem", [
    ("args", {"x": 1}, "celery_app_beat_schedule[r].args must be a list."),
    ("args", "1, 2", "celery_app_beat_schedule[r].args must be a list."),
    ("kwargs", [1], "celery_app_beat_schedule[r].kwargs must be a dict."),
    ("options", "queue=hipri", "celery_app_beat_schedule[r].options must be a dict."),
])
def test_args_kwargs_and_options_types(app, key, value, problem):
    assert app.celery_app_schedule_problems([dict(entry(every=5), **{key: value})]) == [problem]


def test_args_kwargs_and_options(app):
    e = entry(every=5, args=[1, "two"], kwargs={"x": 1}, options={"queue": "hipri", "expires": 10, "priority": 5})
    assert app.celery_app_schedule_problems([e]) == []


# --- celery_app_schedule: the expression in celeryconfig.py -----------------------------------

@pytest.mark.parametrize("schedule, expression", [
    ({"every": 30}, "30.0"),
    ({"every": "0.5"}, "0.5"),
    ({"schedule": 10}, "10.0"),
    ({"crontab": {"minute": "*/15", "hour": "9-17", "day_of_week": "mon-fri"}},
     'crontab(day_of_week="mon-fri", hour="9-17", minute="*/15")'),
    ({"crontab": {"minute": 0}}, 'crontab(minute="0")'),
    ({"solar": {"event": "sunset", "latitude": 51.5, "longitude": -0.12}}, 'solar("sunset", 51.5, -0.12)'),
    ({"solar": {"event": "sunrise", "latitude": "10", "longitude": 0}}, 'solar("sunrise", 10.0, 0.0)'),
])
def test_schedule_expressions(app, schedule, expression):
    assert app.celery_app_schedule(entry(**schedule)) == expression


def test_crontab_values_are_python_string_literals(app):
    """A value is written as a quoted literal whatever it holds (preflight refuses it anyway)."""
    hostile = '*"); __import__("os").system("id"); ("'
    call = ast.parse(app.celery_app_schedule(entry(crontab={"minute": hostile, "hour": "\\n'"})), mode="eval").body
    assert isinstance(call, ast.Call) and call.func.id == "crontab"
    assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {"minute": hostile, "hour": "\\n'"}


def test_solar_event_is_a_python_string_literal(app):
    call = ast.parse(app.celery_app_schedule(entry(solar={"event": 'x") or ("', "latitude": 0, "longitude": 0})),
                     mode="eval").body
    assert [ast.literal_eval(a) for a in call.args] == ['x") or ("', 0.0, 0.0]


# --- Against Celery itself: what the checks pass, Celery parses -------------------------------

def celery_accepts(app, crontab):
    """Whether Celery (the version in the venv, which the kit pins) parses the expression."""
    schedules = pytest.importorskip("celery.schedules")
    try:
        eval(app.celery_app_schedule(entry(crontab=crontab)), {"__builtins__": {}, "crontab": schedules.crontab})
    except (ValueError, schedules.ParseException):
        return False
    return True


@pytest.mark.parametrize("crontab", GOOD_CRONTABS)
def test_celery_accepts_the_crontabs_that_pass_the_checks(app, crontab):
    assert celery_accepts(app, crontab)


def known_bug(value, reason):
    return pytest.param(value, marks=pytest.mark.xfail(strict=True, reason=reason))


@pytest.mark.parametrize("crontab", [
    {"hour": "25"},
    {"minute": "*/0"},
    known_bug({"day_of_week": "5-7"}, "7 for Sunday: Celery 5.6.0 refuses it (celery_app.py:38-39)"),
    known_bug({"minute": "*/"}, "an empty step passes the checks (celery_app.py:52)"),
    known_bug({"minute": "5/2"}, "a step on a single value passes the checks (celery_app.py:51-57)"),
])
def test_the_checks_refuse_what_celery_refuses(app, crontab):
    assert not celery_accepts(app, crontab)
    assert app.celery_app_schedule_problems([entry(crontab=crontab)]) != []


# --- celery_app_schedule_uses -------------------------------------------------------------

@pytest.mark.parametrize("kind, used", [("every", True), ("crontab", True), ("solar", False)])
def test_schedule_uses(app, kind, used):
    entries = [entry(schedule=5), entry(crontab={"minute": 0}), "not a dict"]
    assert app.celery_app_schedule_uses(entries, kind) is used


@pytest.mark.parametrize("entries", [None, [], {}])
def test_schedule_uses_nothing(app, entries):
    assert app.celery_app_schedule_uses(entries, "solar") is False


def test_filters_are_exported(app):
    assert set(app.FilterModule().filters()) == {
        "celery_app_schedule_problems", "celery_app_schedule", "celery_app_schedule_uses",
        "celery_app_python", "celery_app_setting_problems", "celery_app_quorum_problems", "celery_app_env_line", "celery_app_env_problems",
        "celery_app_source_kind", "celery_app_source_problems", "celery_app_release_id", "celery_app_platform"}


# --- celery_app_python, celery_app_setting_problems (celery_app_extra_settings) ----------------

@pytest.mark.parametrize("value", [True, False, None, 0, -3, 2.5, "it's \"q\"\n", [1, "a", None],
                                   {"a": {"b": [True, 1.0]}, 1: "one"}])
def test_settings_read_back_as_the_same_python_value(app, value):
    text = app.celery_app_python(value)
    assert ast.literal_eval(text) == value and type(ast.literal_eval(text)) is type(value)


def test_yaml_booleans_are_python_booleans(app):
    assert app.celery_app_python({"task_track_started": True}) == "{'task_track_started': True}"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, object()])
def test_a_setting_with_no_python_literal_is_named(app, value):
    problems = app.celery_app_setting_problems({"fine": 1, "broker_transport_options": {"x": [value]}})
    assert len(problems) == 1 and problems[0].startswith("celery_app_extra_settings.broker_transport_options['x'][0]")


# --- celery_app_quorum_problems (celery_app_extra_settings with a RabbitMQ cluster) -------------

def test_settings_that_work_with_quorum_queues(app):
    assert app.celery_app_quorum_problems({"task_track_started": True, "task_default_queue_type": "quorum",
                                           "broker_transport_options": {"confirm_publish": True, "x": 1}}) == []


@pytest.mark.parametrize("settings, word", [
    ({"task_queue_max_priority": 10}, "priorities"),
    ({"task_queues": [{"queue_arguments": {"x-max-priority": 5}}]}, "priorities"),
    ({"task_default_queue_type": "classic"}, "task_default_queue_type is 'classic'"),
    ({"task_create_missing_queue_type": "classic"}, "task_create_missing_queue_type"),
    ({"worker_detect_quorum_queues": False}, "global prefetch"),
    ({"broker_transport_options": {"max_retries": 3}}, "confirm_publish: true"),
])
def test_settings_that_quorum_queues_refuse(app, settings, word):
    problems = app.celery_app_quorum_problems(settings)
    assert len(problems) == 1 and word in problems[0], problems


# --- celery_app_env_problems, celery_app_env_line (celery_app_environment) -----------------------

def test_good_environment(app):
    assert app.celery_app_env_problems({"API_KEY": "s3cr3t 'x' $y", "_N1": 5, "EMPTY": ""}) == []


@pytest.mark.parametrize("name", ["1ABC", "MY-VAR", "A B", "A;rm", "", "ÄB", "A\nB"])
def test_names_that_are_not_shell_safe(app, name):
    (problem,) = app.celery_app_env_problems({name: "v"})
    assert "is not a shell variable name" in problem and repr(name) in problem


@pytest.mark.parametrize("value, says", [("line\nnext", "newline"), ("tab\there", "control character"),
                                         ("pasted\n", "newline"), (" lead", "whitespace"), ("trail ", "whitespace"),
                                         (None, "string or a number"), (["a"], "string or a number")])
def test_values_that_cannot_be_one_line(app, value, says):
    (problem,) = app.celery_app_env_problems({"SECRET": value})
    assert problem.startswith("celery_app_environment.SECRET") and says in problem
    assert str(value).strip() not in problem or value is None or isinstance(value, list)


def test_names_the_kit_sets_are_refused(app):
    (problem,) = app.celery_app_env_problems({"PYTHONPATH": "/x"}, ["PYTHONPATH"])
    assert "the kit sets PYTHONPATH itself" in problem


def test_environment_that_is_not_a_mapping(app):
    assert app.celery_app_env_problems(["A=1"]) == ["celery_app_environment must be a mapping of variable names to values."]


def test_env_line_escapes_what_sh_and_systemd_expand(app):
    assert app.celery_app_env_line(("P", 'a"b$c`d\\e')) == 'P="a\\"b\\$c\\`d\\\\e"'


# --- celery_app_source_kind, celery_app_source_problems, celery_app_release_id -----------------

def test_source_kinds(app, tmp_path):
    assert app.celery_app_source_kind(str(tmp_path)) == {"kind": "folder", "folder": str(tmp_path)}
    assert app.celery_app_source_kind({"git": "u", "version": "v1"})["kind"] == "git"
    assert app.celery_app_source_kind({"git": "u", "dist": "d"})["kind"] is None
    assert app.celery_app_source_kind(5) == {"kind": None}


def test_good_sources(app, tmp_path):
    wheel = tmp_path / "myapp-1.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel")
    for source in (str(tmp_path), {"git": "https://git.example.com/app.git", "version": "v1.2.0"},
                   {"git": "file:///srv/app.git", "version": "0123abcd"}, {"dist": str(wheel)},
                   {"requirement": "myapp==1.4.2"}, {"requirement": "my_app[redis]~=1.4"}):
        assert app.celery_app_source_problems(source) == [], source


@pytest.mark.parametrize("source, says", [
    ({"git": "https://git.example.com/app.git"}, "has no version"),
    ({"git": "https://git.example.com/app.git", "version": ""}, "has no version"),
    ({"git": "https://git.example.com/app.git", "version": "v1; rm -rf /"}, "give a tag, branch or commit"),
    ({"git": "https://git.example.com/app.git", "version": "--upload-pack=x"}, "give a tag, branch or commit"),
    ({"git": "u", "dist": "d"}, "a mapping with one of"),
    ({"dist": "/nonexistent/app-1.0-py3-none-any.whl"}, "not a file on the controller"),
    ({"dist": "/etc/hostname"}, "give a wheel (.whl) or an sdist"),
    ({"requirement": "myapp"}, "one pinned requirement"),
    ({"requirement": "myapp==1.0 --index-url=http://evil"}, "one pinned requirement"),
    ({"requirement": "myapp==1.0", "version": "v1"}, "keys the kit does not know"),
    ("/nonexistent/app", "not a folder on the controller"),
    (["a"], "must be a folder on the controller, or a mapping"),
])
def test_bad_sources(app, source, says):
    (problem,) = app.celery_app_source_problems(source)
    assert says in problem and problem.startswith("celery_app_source")


def test_a_release_id_follows_the_folder_contents(app, tmp_path):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "tasks.py").write_text("x = 1\n")
    first = app.celery_app_release_id(str(tmp_path), ["celery==5.5.3"])
    (tmp_path / "proj" / "__pycache__").mkdir()
    (tmp_path / "proj" / "__pycache__" / "tasks.pyc").write_bytes(b"cache")
    assert app.celery_app_release_id(str(tmp_path), ["celery==5.5.3"]) == first
    assert app.celery_app_release_id(str(tmp_path), ["celery==5.5.2"]) != first
    (tmp_path / "proj" / "tasks.py").write_text("x = 2\n")
    assert app.celery_app_release_id(str(tmp_path), ["celery==5.5.3"]) != first
    assert len(first) == 12 and int(first, 16) >= 0


def test_a_git_release_id_follows_the_commit(app):
    source = {"git": "u", "version": "main"}
    assert app.celery_app_release_id(source, [], "a" * 40) != app.celery_app_release_id(source, [], "b" * 40)
    assert app.celery_app_release_id(source, [], "a" * 40) == app.celery_app_release_id(source, [], "a" * 40)


# --- Known bugs (see the report); strict, so a fix shows up as XPASS ------------------------------

@pytest.mark.xfail(strict=True, reason="entries without a name share the name None (celery_app.py:140-143)")
def test_two_entries_without_a_name_are_not_a_duplicate_name(app):
    problems = app.celery_app_schedule_problems(["a", "b"])
    assert not any("appears twice" in p for p in problems)


def test_a_release_id_follows_the_platform(app):
    """Wheels built on Debian 13's Python 3.13 lack what 3.11.2 needs (async-timeout, by a
    python_full_version marker of redis): one release per platform."""
    d12 = app.celery_app_platform({"python": {"version": {"major": 3, "minor": 11, "micro": 2}}, "architecture": "x86_64"})
    d13 = app.celery_app_platform({"python": {"version": {"major": 3, "minor": 13, "micro": 5}}, "architecture": "x86_64"})
    assert d12 == "python 3.11.2 x86_64"
    source = {"requirement": "myapp==1.0"}
    assert app.celery_app_release_id(source, [], "", d12) != app.celery_app_release_id(source, [], "", d13)
