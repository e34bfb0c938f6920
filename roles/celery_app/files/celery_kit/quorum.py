"""With a RabbitMQ cluster (celery_broker_cluster), the settings module imports this module in
every Celery process.

Celery declares a node's own queue (worker_direct, NAME.dq2, which the watchdog probes) as a
durable classic queue, which lives on one RabbitMQ node only: when that node is lost, the
queue is "down" and the worker cannot start again (it fails with NOT_FOUND, grafana/oncall#800).
Here it becomes a quorum queue like the others, with a member on each node: the worker adds it
once its -Q queues are set (the celeryd_after_setup signal, before it declares any queue), and
the watchdog declares it the same way (direct_queue).

Each time a worker's consumer (re)starts, Celery's native delayed delivery (the DelayedDelivery
bootstep) declares its exchanges, queues and bindings through every URL of broker_url in turn,
each tried 4 times. A cluster shares them, so one node is enough; but a lost node's URL was
tried too, each attempt waiting for its connect timeout when the node vanished without a reset.
The consumer took no task meanwhile (about 50 s), missed its heartbeats, lost its connection
and started over: tasks stopped until the node came back. Here the setup goes through the node
the consumer is connected to, then the others in turn, and stops at the first that succeeds.
"""

import logging

from celery.signals import celeryd_after_setup
from celery.utils.nodenames import worker_direct
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from kombu import Queue
from kombu.utils.url import maybe_sanitize_url, parse_url

logger = logging.getLogger(__name__)


def direct_queue(app, name):
    """The worker_direct queue of node NAME, as the node declares it."""
    queue = worker_direct(name)
    if app.conf.task_default_queue_type != "quorum":
        return queue
    return Queue(queue.name, queue.exchange, queue.routing_key, queue_arguments={"x-queue-type": "quorum"})


@celeryd_after_setup.connect
def _quorum_direct_queue(sender, instance, **kwargs):
    if instance.app.conf.worker_direct:
        instance.app.amqp.queues.select_add(direct_queue(instance.app, sender))


def connected_first(urls, hostname):
    """The broker URLs, the one of the node at HOSTNAME first, the others in their order."""
    return sorted(urls, key=lambda url: parse_url(url)["hostname"] != hostname)


def _delayed_delivery_through_one_node(self, c):
    self._validate_configuration(c.app)
    urls = list(dict.fromkeys(c.app.conf.broker_url.split(";") if isinstance(c.app.conf.broker_url, str)
                              else c.app.conf.broker_url))
    for url in connected_first(urls, getattr(c.connection, "hostname", None)):
        try:
            self._setup_delayed_delivery(c, url)
            return url
        except Exception as exc:  # noqa: BLE001 - the next node may answer; Celery logs and goes on too
            logger.warning("Delayed delivery: could not set up through %s (%s); trying the next node",
                           maybe_sanitize_url(url), exc)
    logger.critical("Failed to setup delayed delivery for all broker URLs. "
                    "Native delayed delivery will not be available.")
    return None


DelayedDelivery.start = _delayed_delivery_through_one_node
