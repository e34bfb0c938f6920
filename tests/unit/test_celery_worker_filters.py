"""roles/celery_worker/filter_plugins/celery_worker.py, called directly.

The filters take celery_worker_nodes, celery_worker_node_opts and __celery_worker_defaults
(roles/celery_worker/vars/main.yml), the host-wide settings by the key a node overrides them
with. DEFAULTS is that dict for the role's defaults, as Ansible passes it (native types, an
unset variable as None)."""

import glob
import os
import re

import pytest
import yaml

DEFAULTS = {
    "concurrency": None,
    "queues": ["celery", "hipri"],
    "loglevel": "WARNING",
    "pool": "prefork",
    "autoscale": None,
    "max_tasks_per_child": None,
    "max_memory_per_child": None,
    "time_limit": 300,
    "soft_time_limit": None,
    "prefetch_multiplier": None,
    "optimization": None,
}


def defaults(**changes):
    return dict(DEFAULTS, **changes)


def test_defaults_mirror_the_role_defaults(worker, root):
    """DEFAULTS is what vars/main.yml builds from defaults/main.yml."""
    with open(os.path.join(root, "roles/celery_worker/defaults/main.yml")) as f:
        role = yaml.safe_load(f)
    assert {key: role[var] for key, (_, var) in worker.SETTINGS.items()} == DEFAULTS


def test_every_filter_the_roles_use_is_exported(worker, root):
    used = set()
    for path in glob.glob(os.path.join(root, "roles", "**", "*.*"), recursive=True):
        if path.endswith((".yml", ".j2")):
            with open(path) as f:
                used.update(re.findall(r"\|\s*(celery_worker_\w+)", f.read()))
    assert used and used <= set(worker.FilterModule().filters())


# --- Node lists: a count, names, dicts -------------------------------------------------------

@pytest.mark.parametrize("count", [3, "3"])
def test_a_count_names_nodes_as_celery_multi_does(worker, count):
    nodes = worker.celery_worker_nodes(count, {}, DEFAULTS)
    assert [n["fullname"] for n in nodes] == ["celery1", "celery2", "celery3"]


def test_the_default_single_node(worker):
    (node,) = worker.celery_worker_nodes(["worker1"], {}, DEFAULTS)
    assert node == dict(DEFAULTS, name="worker1", hostname="", fullname="worker1")


def test_a_name_with_a_host_part(worker):
    (node,) = worker.celery_worker_nodes(["images@%h"], {}, DEFAULTS)
    assert (node["name"], node["hostname"], node["fullname"]) == ("images", "%h", "images@%h")


def test_a_dicts_hostname_replaces_the_host_part_of_its_name(worker):
    nodes = worker.celery_worker_nodes([{"name": "fast", "hostname": "%n.example"},
                                        {"name": "slow@a", "hostname": "b"}], {}, DEFAULTS)
    assert [n["fullname"] for n in nodes] == ["fast@%n.example", "slow@b"]


def test_a_dicts_own_settings_override_the_host_wide_ones(worker):
    (node,) = worker.celery_worker_nodes([{"name": "w1", "concurrency": 4, "queues": ["data"]}],
                                         {}, DEFAULTS)
    assert (node["concurrency"], node["queues"], node["pool"]) == (4, ["data"], "prefork")


@pytest.mark.parametrize("count", [1, 64])
def test_count_limits_are_accepted(worker, count):
    assert worker.celery_worker_problems(count, {}, DEFAULTS) == []


@pytest.mark.parametrize("nodes, message", [
    (0, "celery_worker_nodes: a count must be 1 to 64, not 0."),
    (65, "celery_worker_nodes: a count must be 1 to 64, not 65."),
    ("-1", "celery_worker_nodes: give a count of nodes or a list of node names, not '-1'."),
    ("worker1", "celery_worker_nodes: give a count of nodes or a list of node names, not 'worker1'."),
    ({"name": "w1"}, "celery_worker_nodes: give a count of nodes or a list of node names, not {'name': 'w1'}."),
    (None, "celery_worker_nodes: give a count of nodes or a list of node names, not None."),
    (True, "celery_worker_nodes: give a count of nodes or a list of node names, not True."),
    ([], "celery_worker_nodes: the list is empty: give at least one node."),
    ([{"concurrency": 2}], "celery_worker_nodes: the entry {'concurrency': 2} has no name."),
    ([None], "celery_worker_nodes: the entry None is neither a name nor a dict with a name."),
    ([["w1"]], "celery_worker_nodes: the entry ['w1'] is neither a name nor a dict with a name."),
])
def test_a_node_list_that_is_not_one(worker, nodes, message):
    assert worker.celery_worker_problems(nodes, {}, DEFAULTS) == [message]
    assert worker.celery_worker_nodes(nodes, {}, DEFAULTS) == []


@pytest.mark.parametrize("name, words", [
    ("1", "the node name '1' is a number, which celery multi reads as a count"),
    (7, "the node name '7' is a number"),
    ("w-1", "the node name 'w-1' may use only letters, digits, '_' and '.'"),
    ("w 1", "the node name 'w 1' may use only letters"),
    ("w1;id", "the node name 'w1;id' may use only letters"),
    ("w1@bad host", "the host part 'bad host' after '@' may use letters"),
    ("w1@%i", "the host part '%i' after '@'"),
])
def test_bad_node_names(worker, name, words):
    (problem,) = worker.celery_worker_problems([name], {}, DEFAULTS)
    assert problem.startswith("celery_worker_nodes, node '%s': " % str(name).split("@")[0])
    assert words in problem


@pytest.mark.parametrize("name", ["w1", "w_1.a", "w1@%h", "w1@%n.example-1", "w1@%d"])
def test_good_node_names(worker, name):
    assert worker.celery_worker_problems([name], {}, DEFAULTS) == []


def test_a_node_named_twice(worker):
    assert worker.celery_worker_problems(["w1", "w1@%h"], {}, DEFAULTS) == [
        "celery_worker_nodes: node 'w1' appears twice."]


def test_an_unknown_setting_of_a_node(worker):
    assert worker.celery_worker_problems([{"name": "w1", "queue": ["a"]}], {}, DEFAULTS) == [
        "celery_worker_nodes, node 'w1': unknown setting 'queue' (known: %s)." % ", ".join(worker.SETTINGS)]


# --- celery_worker_node_opts: selectors by index, range or name ------------------------------

def queues_by_node(worker, nodes, node_opts):
    return {n["name"]: n["queues"] for n in worker.celery_worker_nodes(nodes, node_opts, DEFAULTS)}


def test_the_guides_ten_nodes(worker):
    """celery multi start 10 -Q:1-3 images,video -Q:4,5 data -Q default"""
    got = queues_by_node(worker, 10, {"1-3": {"queues": ["images", "video"]}, "4,5": {"queues": ["data"]}})
    assert got == dict({"celery%d" % i: ["images", "video"] for i in (1, 2, 3)},
                       **{"celery%d" % i: ["data"] for i in (4, 5)},
                       **{"celery%d" % i: ["celery", "hipri"] for i in range(6, 11)})


@pytest.mark.parametrize("selector, picked", [
    ("2", ["b"]),
    (2, ["b"]),  # YAML reads an unquoted key 2 as an int
    ("1-2", ["a", "b"]),
    ("3-3", ["c"]),
    ("1,3", ["a", "c"]),
    (" 1 , 3 ", ["a", "c"]),
    ("c", ["c"]),
    ("a,c", ["a", "c"]),
    ("1,c", ["a", "c"]),
])
def test_selectors(worker, selector, picked):
    got = queues_by_node(worker, ["a", "b", "c"], {selector: {"queues": ["x"]}})
    assert sorted(n for n, q in got.items() if q == ["x"]) == picked


def test_a_nodes_own_dict_wins_over_node_opts(worker):
    got = queues_by_node(worker, [{"name": "a", "queues": ["own"]}, "b"], {"1-2": {"queues": ["opt"]}})
    assert got == {"a": ["own"], "b": ["opt"]}


def test_later_node_opts_win_over_earlier_ones(worker):
    got = queues_by_node(worker, ["a", "b"], {"1-2": {"queues": ["all"]}, "b": {"queues": ["b"]}})
    assert got == {"a": ["all"], "b": ["b"]}


@pytest.mark.parametrize("node_opts", [None, "", {}])
def test_no_node_opts(worker, node_opts):
    assert worker.celery_worker_problems(["a"], node_opts, DEFAULTS) == []


@pytest.mark.parametrize("selector, message", [
    ("1-4", "celery_worker_node_opts['1-4']: range 1-4 is outside nodes 1-3."),
    ("0-2", "celery_worker_node_opts['0-2']: range 0-2 is outside nodes 1-3."),
    ("3-1", "celery_worker_node_opts['3-1']: range 3-1 is outside nodes 1-3."),
    ("4", "celery_worker_node_opts['4']: index 4 is outside nodes 1-3."),
    ("0", "celery_worker_node_opts['0']: index 0 is outside nodes 1-3."),
    ("zz", "celery_worker_node_opts['zz']: 'zz' is neither a node name on this host (a, b, c) nor an index."),
    ("1,zz", "celery_worker_node_opts['1,zz']: 'zz' is neither a node name on this host (a, b, c) nor an index."),
])
def test_bad_selectors(worker, selector, message):
    assert worker.celery_worker_problems(["a", "b", "c"], {selector: {"queues": ["x"]}}, DEFAULTS) == [message]


def test_node_opts_that_are_not_a_mapping(worker):
    (problem,) = worker.celery_worker_problems(["a"], [{"queues": ["x"]}], DEFAULTS)
    assert problem.startswith("celery_worker_node_opts must map node selectors")


def test_node_opts_settings_that_are_not_a_mapping(worker):
    (problem,) = worker.celery_worker_problems(["a"], {"1": ["x"]}, DEFAULTS)
    assert problem.startswith("celery_worker_node_opts['1'] must be a dict of settings")


def test_an_unknown_setting_in_node_opts_is_reported_once_per_node(worker):
    problems = worker.celery_worker_problems(["a", "b"], {"1-2": {"queue": ["x"]}}, DEFAULTS)
    assert [p.split(":")[0] for p in problems] == ["celery_worker_nodes, node 'a'", "celery_worker_nodes, node 'b'"]
    assert all("unknown setting 'queue'" in p for p in problems)


# --- Settings: host-wide and per node ----------------------------------------------------------

GOOD_SETTINGS = [
    ("concurrency", None), ("concurrency", ""), ("concurrency", 1), ("concurrency", "8"),
    ("queues", ["a", "b.c", "d-e_f"]),
    ("loglevel", "debug"), ("loglevel", "FATAL"),
    ("pool", "threads"), ("pool", "solo"), ("pool", "eventlet"), ("pool", "gevent"),
    ("autoscale", "10,3"), ("autoscale", "10, 3"), ("autoscale", "10"), ("autoscale", [10, 3]),
    ("autoscale", ["10"]), ("autoscale", {"max": 10, "min": 3}), ("autoscale", {"max": 10}),
    ("autoscale", "5,5"), ("autoscale", ""), ("autoscale", []),
    ("max_tasks_per_child", 50), ("max_memory_per_child", "200000"),
    ("time_limit", 1), ("time_limit", "60"),
    ("soft_time_limit", 299),
    ("prefetch_multiplier", 0), ("prefetch_multiplier", 4),
    ("optimization", "fair"), ("optimization", "default"), ("optimization", ""),
]


@pytest.mark.parametrize("key, value", GOOD_SETTINGS)
def test_good_settings_host_wide(worker, key, value):
    assert worker.celery_worker_problems(["w1"], {}, defaults(**{key: value})) == []


@pytest.mark.parametrize("key, value", GOOD_SETTINGS)
def test_good_settings_per_node(worker, key, value):
    assert worker.celery_worker_problems([{"name": "w1", key: value}], {}, DEFAULTS) == []


# (key, value, what the message says after "<variable> is <value>;" or "<where>: ").
BAD_SETTINGS = [
    ("concurrency", 0, "set a whole number of at least 1, or leave it unset"),
    ("concurrency", -1, "set a whole number of at least 1"),
    ("concurrency", "ten", "set a whole number of at least 1"),
    ("concurrency", 2.5, "set a whole number of at least 1"),
    ("concurrency", True, "set a whole number of at least 1"),
    ("max_tasks_per_child", 0, "set a whole number of at least 1"),
    ("max_memory_per_child", "1k", "set a whole number of at least 1"),
    ("prefetch_multiplier", "x", "set a whole number of at least 1"),
    ("queues", "celery", "give a list of at least one queue name"),
    ("queues", [], "give a list of at least one queue name"),
    ("queues", None, "give a list of at least one queue name"),
    ("queues", ["a,b"], "queue name 'a,b' may use only letters"),
    ("queues", ["x$(id)"], "queue name 'x$(id)' may use only letters"),
    ("queues", [1], "queue name 1 may use only letters"),
    ("loglevel", "verbose", "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL, FATAL"),
    ("loglevel", None, "use one of DEBUG"),
    ("pool", "processes", "use one of prefork, threads, solo, eventlet, gevent"),
    ("pool", None, "use one of prefork"),
    ("autoscale", "3,10", "max 3 is below min 10 (or below 1): write it as 'max,min'"),
    ("autoscale", "0", "max 0 is below min 0 (or below 1)"),
    ("autoscale", "a,b", "give max and min as whole numbers, e.g. '10,3'"),
    ("autoscale", "10,3,1", "give max and min as whole numbers"),
    ("autoscale", {"min": 3}, "give max and min as whole numbers"),
    ("time_limit", None, "set a whole number of seconds, at least 1"),
    ("time_limit", 0, "set a whole number of seconds, at least 1"),
    ("time_limit", "5m", "set a whole number of seconds, at least 1"),
    ("soft_time_limit", 300, "soft_time_limit 300 must be below time_limit 300"),
    ("optimization", "fast", "use fair or default (-O), or leave it unset"),
]


@pytest.mark.parametrize("key, value, words", BAD_SETTINGS)
def test_bad_settings_host_wide_name_the_variable(worker, key, value, words):
    (problem,) = worker.celery_worker_problems(["w1", "w2"], {}, defaults(**{key: value}))
    assert problem.startswith("celery_worker_" + key), problem
    assert words in problem


@pytest.mark.parametrize("key, value, words", BAD_SETTINGS)
def test_bad_settings_per_node_name_the_node(worker, key, value, words):
    (problem,) = worker.celery_worker_problems(["w1", {"name": "w2", key: value}], {}, DEFAULTS)
    assert problem.startswith("celery_worker_nodes, node 'w2': "), problem
    assert words in problem


def test_a_bad_host_wide_setting_is_reported_once_for_all_nodes(worker):
    assert worker.celery_worker_problems(10, {}, defaults(concurrency=0)) == [
        "celery_worker_concurrency is 0; set a whole number of at least 1, or leave it unset."]


def test_a_node_that_overrides_a_bad_host_wide_setting_is_checked_on_its_own_value(worker):
    problems = worker.celery_worker_problems(["w1", {"name": "w2", "pool": "bogus"}], {},
                                             defaults(pool="processes"))
    assert [p.split(" is ")[0] for p in problems] == ["celery_worker_pool", "celery_worker_nodes, node 'w2': pool"]


def test_soft_limit_above_a_nodes_own_hard_limit(worker):
    assert worker.celery_worker_problems([{"name": "w1", "time_limit": 60}], {}, defaults(soft_time_limit=100)) == [
        "celery_worker_nodes, node 'w1': soft_time_limit 100 must be below time_limit 60 (the soft limit "
        "raises in the task, the hard limit kills it)."]


@pytest.mark.parametrize("extra", ["", None, "--without-mingle --without-gossip", "-E --hostname=x@%h:1/2+3"])
def test_good_extra_opts(worker, extra):
    assert worker.celery_worker_problems(["w1"], {}, DEFAULTS, extra) == []


@pytest.mark.parametrize("extra", ['--x "y"', "--x; id", "--x $(id)", "--x `id`", "--x | id", "--x \\n"])
def test_extra_opts_cannot_carry_shell(worker, extra):
    (problem,) = worker.celery_worker_problems(["w1"], {}, DEFAULTS, extra)
    assert problem.startswith("celery_worker_extra_opts %r may use only" % extra)


def test_each_problem_is_reported_once(worker):
    problems = worker.celery_worker_problems(["a", "b"], {"1-2": {"pool": "bogus"}}, DEFAULTS)
    assert len(problems) == 2 and len(set(problems)) == 2  # one per node, each named


# --- CELERYD_OPTS --------------------------------------------------------------------------

def opts(worker, nodes, node_opts=None, extra="", **changes):
    d = defaults(**changes)
    return worker.celery_worker_opts(worker.celery_worker_nodes(nodes, node_opts or {}, d), d, extra)


def test_opts_for_the_role_defaults(worker):
    # Unset concurrency: no --concurrency, Celery's own default (one process per CPU).
    assert opts(worker, ["worker1"]) == "--queues=celery,hipri --pool=prefork --time-limit=300"


def test_opts_for_the_guides_ten_nodes(worker):
    got = opts(worker, 10, {"1-3": {"queues": ["images", "video"]}, "4,5": {"queues": ["data"], "loglevel": "debug"}},
               concurrency=1, queues=["default"], loglevel="INFO")
    assert got == ("--concurrency=1 --queues=default --pool=prefork --time-limit=300"
                   " --queues:celery1,celery2,celery3=images,video --queues:celery4,celery5=data"
                   " --loglevel:celery4,celery5=DEBUG")


def test_opts_leave_the_host_wide_log_level_to_the_units(worker):
    assert "--loglevel" not in opts(worker, ["w1"], loglevel="INFO")


def test_opts_name_a_node_only_where_it_differs(worker):
    got = opts(worker, [{"name": "a", "loglevel": "warning"}, {"name": "b", "concurrency": 8}], concurrency="8")
    assert got == "--concurrency=8 --queues=celery,hipri --pool=prefork --time-limit=300"


def test_opts_name_nodes_by_their_short_name(worker):
    got = opts(worker, ["default@%h", {"name": "fast", "hostname": "%n.example", "concurrency": 2}], concurrency=8)
    assert got.endswith(" --concurrency:fast=2")


@pytest.mark.parametrize("autoscale", ["6, 2", [6, 2], {"max": 6, "min": 2}])
def test_opts_write_autoscale_as_max_comma_min(worker, autoscale):
    assert opts(worker, ["w1", {"name": "a", "autoscale": autoscale}]).endswith(" --autoscale:a=6,2")


def test_opts_end_with_the_extra_options(worker):
    assert opts(worker, ["w1"], extra="  --without-mingle ").endswith(" --time-limit=300 --without-mingle")


# --- One node's options, resizing, health, pools ----------------------------------------------

def node(worker, entry, **changes):
    (resolved,) = worker.celery_worker_nodes([entry], {}, defaults(**changes))
    return resolved


def test_node_argv(worker):
    assert worker.celery_worker_node_argv(node(worker, "w1@%h", concurrency=4)) == (
        "-n w1@%h --concurrency=4 --queues=celery,hipri --loglevel=WARNING --pool=prefork --time-limit=300")


def test_node_argv_with_extra_options(worker):
    argv = worker.celery_worker_node_argv(node(worker, "w1"), " --without-gossip ")
    assert argv.startswith("-n w1 --queues=") and argv.endswith("--time-limit=300 --without-gossip")


@pytest.mark.parametrize("entry, live_has_concurrency", [
    ({"name": "w1"}, False),  # prefork: resized live, so the pool size is left out
    ({"name": "w1", "pool": "threads"}, True),
    ({"name": "w1", "pool": "solo"}, True),
    ({"name": "w1", "autoscale": "4,1"}, True),
])
def test_node_argv_live_leaves_out_only_a_resizable_pool_size(worker, entry, live_has_concurrency):
    n = node(worker, entry, concurrency=2)
    assert "--concurrency=2" in worker.celery_worker_node_argv(n)
    assert ("--concurrency=2" in worker.celery_worker_node_argv(n, live=True)) is live_has_concurrency


@pytest.mark.parametrize("pool, autoscale, resizable", [
    ("prefork", None, True), ("prefork", "", True), ("prefork", [], True),
    ("prefork", "4,1", False), ("threads", None, False), ("solo", None, False),
    ("eventlet", None, False), ("gevent", None, False),
])
def test_resizable(worker, pool, autoscale, resizable):
    assert worker.celery_worker_resizable({"pool": pool, "autoscale": autoscale}) is resizable


def test_resize_nodes_are_the_named_resizable_ones(worker):
    resolved = worker.celery_worker_nodes(
        ["a@%h", {"name": "b", "concurrency": 3}, {"name": "t", "pool": "threads"}, "c"], {}, DEFAULTS)
    assert worker.celery_worker_resize_nodes(resolved, ["a", "b", "t"]) == [
        {"name": "a@%h", "concurrency": None},  # the resize script works out Celery's default
        {"name": "b", "concurrency": 3},
    ]


def test_health_nodes(worker):
    resolved = worker.celery_worker_nodes(["a@%h", {"name": "b", "queues": ["data"]}], {}, DEFAULTS)
    assert worker.celery_worker_health_nodes(resolved) == [
        {"name": "a@%h", "queues": ["celery", "hipri"]}, {"name": "b", "queues": ["data"]}]


def test_pools_each_once_sorted(worker):
    resolved = worker.celery_worker_nodes(
        ["a", {"name": "b", "pool": "gevent"}, {"name": "c", "pool": "gevent"}, {"name": "d", "pool": "eventlet"}],
        {}, DEFAULTS)
    assert worker.celery_worker_pools(resolved) == ["eventlet", "gevent", "prefork"]


# --- Known bugs (see the report); strict, so a fix shows up as XPASS ------------------------------

@pytest.mark.xfail(strict=True, reason="an int autoscale reaches list(value) (celery_worker.py:110)")
def test_an_int_autoscale_is_a_max_like_its_string(worker):
    assert worker.celery_worker_problems(["w1"], {}, defaults(autoscale=10)) == []


@pytest.mark.xfail(strict=True, reason="prefetch_multiplier skips the lower bound (celery_worker.py:207)")
def test_a_negative_prefetch_multiplier_is_refused(worker):
    assert worker.celery_worker_problems(["w1"], {}, defaults(prefetch_multiplier=-1)) != []
