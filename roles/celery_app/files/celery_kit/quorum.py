"""With a RabbitMQ cluster (celery_broker_cluster), the settings module imports this module in
every Celery process.

Celery declares a node's own queue (worker_direct, NAME.dq2, which the watchdog probes) as a
durable classic queue, which lives on one RabbitMQ node only: when that node is lost, the
queue is "down" and the worker cannot start again (it fails with NOT_FOUND, grafana/oncall#800).
Here it becomes a quorum queue like the others, with a member on each node: the worker adds it
once its -Q queues are set (the celeryd_after_setup signal, before it declares any queue), and
the watchdog declares it the same way (direct_queue).
"""

from celery.signals import celeryd_after_setup
from celery.utils.nodenames import worker_direct
from kombu import Queue


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
