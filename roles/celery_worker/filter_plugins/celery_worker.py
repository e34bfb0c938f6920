"""Filters that turn the worker inventory into celery multi's settings.

celery_worker_nodes may be a count (10 -> celery1 .. celery10, as `celery multi start 10`
names them), or a list of names ("w1", "w1@%h") or dicts ({"name": "w1", "concurrency": 4}).
celery_worker_node_opts gives per-node settings by 1-based index, range or name, the way
`celery multi` selects nodes ("1-3", "4,5", "w1"). Each node's settings are resolved here so
that the rendered /etc/default/celeryd names nodes explicitly: celery multi applies index
options (-Q:1-3) only when it starts all nodes at once, not when systemd starts one node.
"""

import re

# Per-node settings: key -> (worker option, host-wide variable).
SETTINGS = {
    "concurrency": ("--concurrency", "celery_worker_concurrency"),
    "queues": ("--queues", "celery_worker_queues"),
    "loglevel": ("--loglevel", "celery_worker_loglevel"),
    "pool": ("--pool", "celery_worker_pool"),
    "autoscale": ("--autoscale", "celery_worker_autoscale"),
    "max_tasks_per_child": ("--max-tasks-per-child", "celery_worker_max_tasks_per_child"),
    "max_memory_per_child": ("--max-memory-per-child", "celery_worker_max_memory_per_child"),
    "time_limit": ("--time-limit", "celery_worker_time_limit"),
    "soft_time_limit": ("--soft-time-limit", "celery_worker_soft_time_limit"),
    "prefetch_multiplier": ("--prefetch-multiplier", "celery_worker_prefetch_multiplier"),
    "optimization": ("--optimization", "celery_worker_optimization"),
}
POOLS = ("prefork", "threads", "solo", "eventlet", "gevent")
LOGLEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "FATAL")
OPTIMIZATIONS = ("default", "fair")
SHORT_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
HOST_PART = re.compile(r"^([A-Za-z0-9_.-]|%[hnd])+$")
QUEUE = re.compile(r"^[A-Za-z0-9_.-]+$")
EXTRA_OPTS = re.compile(r"^[A-Za-z0-9 _.,:=/@%+-]*$")
MAX_NODES = 64


def _is_int(value):
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and re.match(r"^[0-9]+$", value) is not None


def _entries(nodes):
    """The node list as dicts, or a string explaining why it is not one."""
    if _is_int(nodes):
        count = int(nodes)
        if count < 1 or count > MAX_NODES:
            return "a count must be 1 to %d, not %s" % (MAX_NODES, nodes)
        return [{"name": "celery%d" % i} for i in range(1, count + 1)]
    if isinstance(nodes, (str, bytes, dict)) or not hasattr(nodes, "__iter__"):
        return "give a count of nodes or a list of node names, not %r" % (nodes,)
    out = []
    for node in nodes:
        if isinstance(node, dict):
            if "name" not in node:
                return "the entry %r has no name" % (node,)
            out.append(dict(node))
        elif isinstance(node, (str, int)) and not isinstance(node, bool):
            out.append({"name": str(node)})
        else:
            return "the entry %r is neither a name nor a dict with a name" % (node,)
    if not out:
        return "the list is empty: give at least one node"
    return out


def _split(entry):
    """Short name and host part of a node ("w1@%h" -> ("w1", "%h"))."""
    name = str(entry["name"])
    short, _, host = name.partition("@")
    host = entry.get("hostname", host) or ""
    return short, str(host)


def _select(selector, names):
    """Node names picked by a celery multi selector: "3", "1-3", "4,5", "w1,w2"."""
    picked = []
    for part in str(selector).split(","):
        part = part.strip()
        m = re.match(r"^([0-9]+)-([0-9]+)$", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo < 1 or hi > len(names) or lo > hi:
                raise ValueError("range %s is outside nodes 1-%d" % (part, len(names)))
            picked.extend(names[lo - 1:hi])
        elif re.match(r"^[0-9]+$", part) and part not in names:
            i = int(part)
            if i < 1 or i > len(names):
                raise ValueError("index %s is outside nodes 1-%d" % (part, len(names)))
            picked.append(names[i - 1])
        elif part in names:
            picked.append(part)
        else:
            raise ValueError("'%s' is neither a node name on this host (%s) nor an index"
                             % (part, ", ".join(names)))
    return picked


def _autoscale(value):
    """(max, min) from "10,3", [10, 3] or {max: 10, min: 3}; None when unset."""
    if value in (None, "", [], {}):
        return None
    if isinstance(value, dict):
        pair = [value.get("max"), value.get("min", 0)]
    elif isinstance(value, str):
        pair = [p.strip() for p in value.split(",")]
    else:
        pair = list(value)
    if len(pair) == 1:
        pair.append(0)
    if len(pair) != 2 or not all(_is_int(p) for p in pair):
        raise ValueError("give max and min as whole numbers, e.g. '10,3'")
    hi, lo = int(pair[0]), int(pair[1])
    if hi < 1 or hi < lo:
        raise ValueError("max %d is below min %d (or below 1): write it as 'max,min'" % (hi, lo))
    return (hi, lo)


def _resolve(nodes, node_opts, defaults):
    """(resolved nodes, problems)."""
    problems = []
    entries = _entries(nodes)
    if isinstance(entries, str):
        return [], ["celery_worker_nodes: " + entries + "."]
    names = [_split(e)[0] for e in entries]
    overrides = {n: {} for n in names}
    if node_opts in (None, ""):
        node_opts = {}
    if not isinstance(node_opts, dict):
        problems.append("celery_worker_node_opts must map node selectors ('1-3', '4,5', a node "
                        "name) to settings, not %r." % (node_opts,))
        node_opts = {}
    for selector, settings in node_opts.items():
        if not isinstance(settings, dict):
            problems.append("celery_worker_node_opts['%s'] must be a dict of settings (%s)."
                            % (selector, ", ".join(SETTINGS)))
            continue
        try:
            for name in _select(selector, names):
                overrides[name].update(settings)
        except ValueError as exc:
            problems.append("celery_worker_node_opts['%s']: %s." % (selector, exc))
    resolved = []
    for entry, name in zip(entries, names):
        node = {k: defaults.get(k) for k in SETTINGS}
        own = {k: v for k, v in entry.items() if k not in ("name", "hostname")}
        node.update(overrides[name])
        node.update(own)
        node["name"] = name
        node["hostname"] = _split(entry)[1]
        node["fullname"] = name + ("@" + node["hostname"] if node["hostname"] else "")
        for key in list(node):
            if key not in SETTINGS and key not in ("name", "hostname", "fullname"):
                problems.append("celery_worker_nodes, node '%s': unknown setting '%s' (known: %s)."
                                % (name, key, ", ".join(SETTINGS)))
        resolved.append(node)
    return resolved, problems


def _check_node(node, where, host_wide=False):
    """Problems with one node's settings; `where` names the variable for the message.

    With host_wide, the settings are the host-wide variables and each message names its own.
    """
    p = []

    def bad(key, hint):
        if host_wide:
            p.append("%s is %r; %s." % (SETTINGS[key][1], node.get(key), hint))
        else:
            p.append("%s: %s is %r; %s." % (where, key, node.get(key), hint))

    if not host_wide and SHORT_NAME.match(node["name"]) and node["name"].isdigit():
        p.append("%s: the node name '%s' is a number, which celery multi reads as a count of "
                 "nodes; start it with a letter." % (where, node["name"]))
    elif not host_wide and not SHORT_NAME.match(node["name"]):
        p.append("%s: the node name '%s' may use only letters, digits, '_' and '.' before any '@' "
                 "(no spaces or shell characters; celery multi reads '-' in a node's option "
                 "namespace as a range of node numbers)." % (where, node["name"]))
    if node["hostname"] and not HOST_PART.match(node["hostname"]):
        p.append("%s: the host part '%s' after '@' may use letters, digits, '_', '.', '-' and "
                 "the %%h, %%n and %%d placeholders only." % (where, node["hostname"]))
    q = node.get("queues")
    if isinstance(q, str) or not isinstance(q, (list, tuple)) or not q:
        bad("queues", "give a list of at least one queue name")
    else:
        for name in q:
            if not isinstance(name, str) or not QUEUE.match(name):
                p.append("%s: queue name %r may use only letters, digits, '_', '.' and '-' (no "
                         "commas, quotes or spaces)."
                         % ("celery_worker_queues" if host_wide else where, name))
    level = node.get("loglevel")
    if not isinstance(level, str) or level.upper() not in LOGLEVELS:
        bad("loglevel", "use one of " + ", ".join(LOGLEVELS))
    if node.get("pool") not in POOLS:
        bad("pool", "use one of " + ", ".join(POOLS))
    try:
        _autoscale(node.get("autoscale"))
    except (ValueError, TypeError) as exc:
        p.append("%s: autoscale %r: %s." % ("celery_worker_autoscale" if host_wide else where,
                                             node.get("autoscale"), exc))
    for key in ("concurrency", "max_tasks_per_child", "max_memory_per_child", "soft_time_limit",
                "prefetch_multiplier"):
        v = node.get(key)
        if v not in (None, "") and (not _is_int(v) or (int(v) < 1 and key != "prefetch_multiplier")):
            bad(key, "set a whole number of at least 1, or leave it unset")
    t = node.get("time_limit")
    if not _is_int(t) or int(t) < 1:
        bad("time_limit", "set a whole number of seconds, at least 1 (the hard limit of any task)")
    else:
        s = node.get("soft_time_limit")
        if _is_int(s) and int(s) >= int(t):
            p.append("%s: soft_time_limit %s must be below time_limit %s (the soft limit raises in "
                     "the task, the hard limit kills it)."
                     % ("celery_worker_soft_time_limit" if host_wide else where, s, t))
    o = node.get("optimization")
    if o not in (None, "") and o not in OPTIMIZATIONS:
        bad("optimization", "use fair or default (-O), or leave it unset")
    return p


def _fine(key):
    """A valid stand-in value, so that a bad host-wide setting is reported once."""
    return {"concurrency": 1, "queues": ["celery"], "loglevel": "INFO", "pool": "prefork",
            "time_limit": 60}.get(key)


def _value(key, value):
    if key == "queues":
        return ",".join(value)
    if key == "loglevel":
        return value.upper()
    if key == "autoscale":
        hi, lo = _autoscale(value)
        return "%d,%d" % (hi, lo)
    return str(value)


def _opts(node, keys):
    out = []
    for key in keys:
        v = node.get(key)
        if v in (None, "", [], {}):
            continue
        out.append("%s=%s" % (SETTINGS[key][0], _value(key, v)))
    return out


def celery_worker_nodes(nodes, node_opts, defaults):
    """Every node as a dict with all its settings resolved."""
    return _resolve(nodes, node_opts, defaults)[0]


def celery_worker_problems(nodes, node_opts, defaults, extra_opts=""):
    """Messages for every bad setting; empty when the inventory is fine."""
    resolved, problems = _resolve(nodes, node_opts, defaults)
    host = dict(defaults, name="-", hostname="")
    host_problems = _check_node(host, "", host_wide=True)
    problems.extend(host_problems)
    seen = set()
    for node in resolved:
        if node["name"] in seen:
            problems.append("celery_worker_nodes: node '%s' appears twice." % node["name"])
        seen.add(node["name"])
        # A setting the node takes from the host-wide variable was reported above.
        own = dict(node)
        for key in SETTINGS:
            if host_problems and own.get(key) == defaults.get(key):
                own[key] = _fine(key)
        problems.extend(_check_node(own, "celery_worker_nodes, node '%s'" % node["name"]))
    if not EXTRA_OPTS.match(str(extra_opts or "")):
        problems.append("celery_worker_extra_opts %r may use only letters, digits, spaces and "
                        "_ . , : = / @ %% + - (no quotes, $, ;, | or backslashes)." % (extra_opts,))
    # One message per problem, each once.
    return list(dict.fromkeys(problems))


def celery_worker_opts(resolved, defaults, extra_opts=""):
    """CELERYD_OPTS: host-wide options, then each differing setting by node name.

    The log level is left out of the host-wide part: the units and init script pass
    CELERYD_LOG_LEVEL themselves, and a node's own level overrides it.
    """
    keys = [k for k in SETTINGS if k != "loglevel"]
    out = _opts(defaults, keys)
    for key in SETTINGS:
        dv = defaults.get(key)
        dv = None if dv in (None, "", [], {}) else _value(key, dv)
        groups = {}
        for node in resolved:
            v = node.get(key)
            if v in (None, "", [], {}) or _value(key, v) == dv:
                continue
            groups.setdefault(_value(key, v), []).append(node["name"])
        for value, names in groups.items():
            out.append("%s:%s=%s" % (SETTINGS[key][0], ",".join(names), value))
    if extra_opts:
        out.append(str(extra_opts).strip())
    return " ".join(out)


def celery_worker_resizable(node):
    """Whether a running node takes a new pool size live (pool_grow, pool_shrink).

    Only the prefork pool without autoscale: the threads and solo pools cannot grow, and with
    autoscale Celery refuses both commands.
    """
    return node.get("pool") == "prefork" and node.get("autoscale") in (None, "", [], {})


def celery_worker_node_argv(node, extra_opts="", live=False):
    """One node's effective worker options, as celery multi will pass them.

    With live, a node whose pool size a deploy changes live (celery_worker_resizable) is given
    without --concurrency: its unit drop-in records this, so that a new pool size alone does
    not restart it.
    """
    keys = [k for k in SETTINGS if not (live and k == "concurrency" and celery_worker_resizable(node))]
    return " ".join(["-n " + node["fullname"] if node["hostname"] else "-n " + node["name"]]
                    + _opts(node, keys) + ([str(extra_opts).strip()] if extra_opts else []))


def celery_worker_resize_nodes(resolved, names):
    """Full name and pool size of each node in names that takes its pool size live; the resize
    script works out Celery's default for a node without one."""
    return [{"name": n["fullname"], "concurrency": n.get("concurrency")}
            for n in resolved if n["name"] in names and celery_worker_resizable(n)]


def celery_worker_health_nodes(resolved):
    """Each node's full name and queues, for the health check after a restart."""
    return [{"name": n["fullname"], "queues": list(n["queues"])} for n in resolved]


def celery_worker_metric_nodes(resolved, hostname):
    """Each node's name as Celery gives it on a host of that full name (celery.utils.nodenames:
    %h the full name, %n its first label, %d its domain; no '@' is name@hostname), with each of
    its queues: [{"worker": "w1@host", "queue": "celery"}, ...]."""
    short, _, domain = hostname.partition(".")
    rows = []
    for n in resolved:
        host = n["hostname"] or hostname
        host = host.replace("%h", hostname).replace("%n", short).replace("%d", domain)
        rows.extend({"worker": "%s@%s" % (n["name"], host), "queue": q} for q in n["queues"])
    return rows


def celery_worker_pools(resolved):
    """The pools used by the nodes, each once."""
    return sorted({n.get("pool") for n in resolved if n.get("pool")})


class FilterModule:
    def filters(self):
        return {
            "celery_worker_nodes": celery_worker_nodes,
            "celery_worker_problems": celery_worker_problems,
            "celery_worker_opts": celery_worker_opts,
            "celery_worker_node_argv": celery_worker_node_argv,
            "celery_worker_resizable": celery_worker_resizable,
            "celery_worker_resize_nodes": celery_worker_resize_nodes,
            "celery_worker_pools": celery_worker_pools,
            "celery_worker_health_nodes": celery_worker_health_nodes,
            "celery_worker_metric_nodes": celery_worker_metric_nodes,
        }
