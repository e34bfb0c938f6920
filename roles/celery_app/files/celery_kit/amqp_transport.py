"""For RabbitMQ over TLS with a list of nodes (celery_broker_tls), the kit's settings module
imports this module in every Celery process: each connection then checks the certificate of the
node it connects to.

broker_use_ssl's "server_hostname": None asks kombu to check the name of the host of the URL it
connects to (celery/kombu#1366), which is what a list of nodes needs. But kombu writes that host
into the dict itself, which every connection of the process shares (Celery passes its setting
as it is): from then on every connection checks the first node's name, and after a failover the
next node's certificate is refused. Here kombu fills a copy for each connection. It is a patch
of kombu's class, not a transport of the kit's: kombu's failover replaces the transport named
in the settings with the one of the next URL's scheme (Connection.switch).
"""

from kombu.transport import pyamqp

_establish_connection = pyamqp.Transport.establish_connection


def establish_connection(self):
    conninfo = self.client
    shared = conninfo.ssl
    if not (isinstance(shared, dict) and "server_hostname" in shared and shared["server_hostname"] is None):
        return _establish_connection(self)
    conninfo.ssl = dict(shared)
    try:
        return _establish_connection(self)
    finally:
        conninfo.ssl = shared


if getattr(pyamqp.Transport.establish_connection, "__module__", "") != __name__:
    pyamqp.Transport.establish_connection = establish_connection
