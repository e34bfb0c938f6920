"""The Redis broker: running, private, persistent, closed to clients without a user's password,
and each user limited to what it needs."""

import shlex

import pytest

from conftest import BROKER, host_of, hosts_in, inventory_vars

pytestmark = pytest.mark.skipif(BROKER != "redis", reason="the cluster's broker is %s" % BROKER)

BROKERS = hosts_in("brokers")
TLS = bool(BROKERS) and bool(inventory_vars(BROKERS[0]).get("redis_broker_tls"))
# redis-cli's options on the broker host: the CA redis_broker writes there.
CLI_TLS = "--tls --cacert /etc/redis-tls/ca.crt " if TLS else ""


@pytest.mark.parametrize("name", BROKERS)
def test_redis_runs_and_starts_at_boot(name):
    svc = host_of(name).service("redis-server")
    assert svc.is_running
    assert svc.is_enabled


@pytest.mark.parametrize("name", BROKERS)
def test_redis_config_is_private(name):
    f = host_of(name).file("/etc/redis/redis.conf")
    assert (f.user, f.group, f.mode) == ("redis", "redis", 0o640)
    assert "maxmemory-policy noeviction" in f.content_string
    assert "appendonly yes" in f.content_string


@pytest.mark.parametrize("name", BROKERS)
def test_redis_refuses_clients_without_the_password(name):
    host = host_of(name)
    out = host.run("redis-cli %s-h 127.0.0.1 PING" % CLI_TLS)
    assert "NOAUTH" in out.stdout + out.stderr


def redis_cli(name, user, commands, address="127.0.0.1"):
    """The replies to `commands` (lines) on one connection of `user` (app, kit or exporter), which
    names itself acl-probe first: its refusals are the tests' own in ACL LOG."""
    variables = inventory_vars(name)
    login = {"app": ("celery", variables["vault_redis_broker_password"]),
             "kit": ("celery-kit", variables["vault_redis_broker_kit_password"])}[user]
    script = "\n".join(["CLIENT SETNAME acl-probe"] + commands if user == "app" else commands)
    out = host_of(name).run("printf '%%s\\n' '%s' | REDISCLI_AUTH='%s' redis-cli %s--user %s -h %s"
                            % (script, login[1], CLI_TLS, login[0], address))
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.parametrize("name", BROKERS)
def test_redis_accepts_the_app_user_on_the_workers_address(name):
    host = host_of(name)
    address = host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]
    assert redis_cli(name, "app", ["PING"], address) == ["OK", "PONG"]
    assert host.socket("tcp://%s:6379" % address).is_listening
    assert not host.socket("tcp://0.0.0.0:6379").is_listening


@pytest.mark.parametrize("name", BROKERS)
def test_redis_refused_no_command_of_the_cluster(name):
    """ACL LOG keeps each refusal: none so far in this verify, before the probes below (the
    app's user has every command and key Celery used)."""
    log = redis_cli(name, "kit", ["ACL LOG 128"])
    entries = "\n".join(log).split("\nreason\n")
    foreign = [e for e in entries[1:] if "name=acl-probe" not in e]
    assert not foreign, log


@pytest.mark.parametrize("name", BROKERS)
def test_redis_app_user_may_not_administer_redis(name):
    """The app's user gets NOPERM for what would hurt the broker, and for keys outside Celery's;
    the tasks of this suite run with it all the same."""
    replies = redis_cli(name, "app", ["CONFIG GET maxmemory", "SHUTDOWN NOSAVE", "FLUSHALL", "DEBUG SLEEP 0",
                                      "KEYS *", "ACL LIST", "GET not-celery", "SET not-celery x"])
    assert replies[0] == "OK" and len(replies) == 9, replies
    # DEBUG is refused first by enable-debug-command (off since Redis 7).
    assert all(r.startswith("NOPERM") or r.startswith("ERR DEBUG command not allowed") for r in replies[1:]), replies
    assert host_of(name).service("redis-server").is_running


@pytest.mark.parametrize("name", BROKERS)
def test_nobody_can_log_in_as_the_default_user(name):
    out = host_of(name).run("REDISCLI_AUTH=anything redis-cli %s--user default -h 127.0.0.1 PING" % CLI_TLS)
    assert "WRONGPASS" in out.stdout + out.stderr


@pytest.mark.skipif(not TLS, reason="Redis speaks plain TCP in this scenario")
@pytest.mark.parametrize("name", BROKERS)
def test_redis_speaks_tls_only_and_a_client_with_another_ca_is_refused(name):
    """A plain PING gets no answer; a TLS client that trusts only the system's CAs (not the
    cluster's) fails its handshake; one with the cluster's CA and the broker's address gets in."""
    host = host_of(name)
    address = host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]
    plain = host.run("REDISCLI_AUTH=x redis-cli --user celery -h %s PING" % address)
    assert "PONG" not in plain.stdout and "NOPERM" not in plain.stdout, plain.stdout
    code = ("import socket, ssl, sys\n"
            "ctx = ssl.create_default_context(cafile=sys.argv[2] or None)\n"
            "try:\n"
            "    ctx.wrap_socket(socket.create_connection((sys.argv[1], 6379), 5), server_hostname=sys.argv[1])\n"
            "    print('connected')\n"
            "except ssl.SSLCertVerificationError as e:\n"
            "    print('refused', e.verify_message)\n")
    other = host.run("python3 -c %s %s ''" % (shlex.quote(code), address))
    assert other.stdout.startswith("refused"), other.stdout + other.stderr
    ours = host.run("python3 -c %s %s /etc/redis-tls/ca.crt" % (shlex.quote(code), address))
    assert ours.stdout.strip() == "connected", ours.stdout + ours.stderr
