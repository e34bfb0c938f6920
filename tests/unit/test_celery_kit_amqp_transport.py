"""celery_kit/amqp_transport.py: with a list of RabbitMQ nodes over TLS, each connection attempt
checks the name of the node it connects to, and the settings' dict stays as written. kombu's
connection is run for real; only py-amqp's connection is replaced, by one that records the
server_hostname it was given and refuses."""

import pytest
from kombu import Connection
from kombu.transport import pyamqp

from conftest import load_plugin

URLS = "amqps://u:p@10.0.0.1:5671/celery;amqps://u:p@10.0.0.2:5671/celery"


@pytest.fixture
def attempts(monkeypatch):
    seen = []

    class Refused:
        def __init__(self, **kwargs):
            seen.append(kwargs["ssl"].get("server_hostname"))
            raise ConnectionRefusedError()

    monkeypatch.setattr(pyamqp.Transport, "Connection", Refused)
    monkeypatch.setattr(pyamqp.Transport, "establish_connection", pyamqp.Transport.establish_connection)
    return seen


def connect(shared):
    with pytest.raises(Exception):
        Connection(URLS, ssl=shared).ensure_connection(max_retries=3, interval_start=0, interval_step=0)


def test_kombu_alone_checks_every_node_against_the_first_nodes_name(attempts):
    shared = {"server_hostname": None}
    connect(shared)
    assert attempts == ["10.0.0.1"] * 4 and shared == {"server_hostname": "10.0.0.1"}


def test_each_attempt_checks_its_own_nodes_name(attempts):
    load_plugin("celery_kit_amqp_transport", "roles/celery_app/files/celery_kit/amqp_transport.py")
    shared = {"server_hostname": None, "ca_certs": "/ca.pem"}
    connect(shared)
    assert attempts == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
    assert shared == {"server_hostname": None, "ca_certs": "/ca.pem"}
