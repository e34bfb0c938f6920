"""Filters of the redis_broker role: the lines of /etc/redis/users.acl."""

import hashlib


def _password_hash(password):
    """Redis's form of a stored password: '#' and its SHA-256, so users.acl holds no secret."""
    return "#" + hashlib.sha256(str(password).encode("utf-8")).hexdigest()


def redis_broker_acl_user(name, passwords, commands, keys=(), channels=()):
    """The rules of one user, as users.acl's `user NAME RULES` and ACL SETUSER take them, from
    nothing (reset): on, its passwords, its key and channel patterns, and its commands alone
    (each allowed, or taken away when it starts with '-'; '@name' is a category)."""
    rules = ["on"] + [_password_hash(p) for p in passwords if str(p)]
    rules += ["resetkeys"] + ["~" + k for k in keys]
    rules += ["resetchannels"] + ["&" + c for c in channels]
    rules += ["-@all"] + [c if c.startswith("-") else "+" + c for c in commands]
    return "user %s %s" % (name, " ".join(rules))


def redis_broker_queues(hostvars, workers, extra=()):
    """Every queue the inventory names: each worker host's (celery_worker_queue_names, set by
    celery_worker's preflight and kept in the fact cache) and `extra`. Returns [queues, the
    worker hosts whose queues are not known]."""
    queues, unknown = set(str(q) for q in extra), []
    for host in workers:
        names = hostvars[host].get("celery_worker_queue_names")
        if names is None:
            unknown.append(host)
        else:
            queues.update(str(q) for q in names)
    return [sorted(queues), unknown]


class FilterModule:
    def filters(self):
        return {"redis_broker_acl_user": redis_broker_acl_user, "redis_broker_queues": redis_broker_queues}
