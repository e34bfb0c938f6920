"""The shared verify suites, on this scenario's hardened units and hostile passwords: tasks
round-trip through RabbitMQ and the Redis result backend, every pool runs, beat runs its
schedule, RabbitMQ has no guest and the app user reaches its vhost only, Flower works."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "tests"))

from test_cluster import *  # noqa: E402,F401,F403
from test_flower import *  # noqa: E402,F401,F403
from test_rabbitmq import *  # noqa: E402,F401,F403

# Redis is this scenario's result backend, so workers do hold connections to a Redis.
del test_no_worker_still_uses_redis  # noqa: F821
