"""The Redis broker: running, private, persistent, and closed to clients without the password."""

import pytest

from conftest import BROKER, host_of, hosts_in, inventory_vars

pytestmark = pytest.mark.skipif(BROKER != "redis", reason="the cluster's broker is %s" % BROKER)

BROKERS = hosts_in("brokers")


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
    out = host.run("redis-cli -h 127.0.0.1 PING")
    assert "NOAUTH" in out.stdout + out.stderr


@pytest.mark.parametrize("name", BROKERS)
def test_redis_accepts_the_app_password_on_the_workers_address(name):
    host = host_of(name)
    password = inventory_vars(name)["vault_redis_broker_password"]
    address = host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]
    out = host.run("REDISCLI_AUTH=%s redis-cli -h %s PING" % (password, address))
    assert out.stdout.strip() == "PONG", out.stderr
    assert host.socket("tcp://%s:6379" % address).is_listening
    assert not host.socket("tcp://0.0.0.0:6379").is_listening
