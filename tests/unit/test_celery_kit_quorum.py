"""celery_kit/quorum.py: with a RabbitMQ cluster, a worker's consumer sets up native delayed
delivery through one node, the one it is connected to first, and goes on to the next only when
one fails. Celery's bootstep is run for real; only its per-URL setup is replaced, by one that
records the URL and refuses the lost node's."""

import types

import pytest
from celery import Celery
from celery.worker.consumer.delayed_delivery import DelayedDelivery

from conftest import load_plugin

quorum = load_plugin("celery_kit_quorum", "roles/celery_app/files/celery_kit/quorum.py")

URLS = ["amqps://u:p@10.0.0.1:5671/celery", "amqps://u:p@10.0.0.2:5671/celery", "amqps://u:p@10.0.0.3:5671/celery"]


@pytest.fixture
def tried(monkeypatch):
    seen = []

    def setup(self, c, url):
        seen.append(url.split("@")[1].split(":")[0])
        if "10.0.0.2" in url:  # the lost node
            raise TimeoutError("timed out")

    monkeypatch.setattr(DelayedDelivery, "_setup_delayed_delivery", setup)
    return seen


def consumer(connected_to, broker_url=";".join(URLS)):
    app = Celery(broker=broker_url)
    app.conf.task_default_queue_type = "quorum"
    return types.SimpleNamespace(app=app, connection=types.SimpleNamespace(hostname=connected_to))


def test_the_connected_node_alone_sets_it_up(tried):
    assert DelayedDelivery.start(object.__new__(DelayedDelivery), consumer("10.0.0.3")) == URLS[2]
    assert tried == ["10.0.0.3"]


def test_a_lost_node_is_tried_once_then_the_next(tried):
    assert DelayedDelivery.start(object.__new__(DelayedDelivery), consumer("10.0.0.2")) == URLS[0]
    assert tried == ["10.0.0.2", "10.0.0.1"]


def test_a_list_of_urls_works_too(tried):
    assert DelayedDelivery.start(object.__new__(DelayedDelivery), consumer("10.0.0.1", URLS)) == URLS[0]
    assert tried == ["10.0.0.1"]


def test_every_node_failing_is_logged_not_raised(monkeypatch, caplog):
    def refused(self, c, url):
        raise ConnectionRefusedError()

    monkeypatch.setattr(DelayedDelivery, "_setup_delayed_delivery", refused)
    assert DelayedDelivery.start(object.__new__(DelayedDelivery), consumer("10.0.0.1")) is None
    assert "Failed to setup delayed delivery for all broker URLs" in caplog.text
