"""Mitogen's free strategy (the mitogen package of requirements.txt), found through ansible.cfg's
strategy_plugins. A play on the controller itself (connection: local, as Molecule's create and
destroy playbooks) runs as plain Ansible: under Mitogen, community.docker tasks run with async
never report back to async_status.

Mitogen pins Ansible's processes to CPUs. On a machine with 2 or 3 CPUs that puts the top-level
process and every worker on one CPU and keeps the other for its connection multiplexer, which is
mostly idle: each task's controller side then takes about twice as long. The kit leaves the
processes to the kernel's scheduler (Mitogen's no-op policy), on every machine."""

import ansible_mitogen.affinity
import ansible_mitogen.strategy
from ansible_mitogen.plugins.strategy import mitogen_free as _mitogen

ansible_mitogen.affinity.policy = ansible_mitogen.affinity.Policy()


class StrategyModule(_mitogen.StrategyModule):
    def run(self, iterator, play_context, result=0):
        if iterator._play.connection == "local":
            # Skips Mitogen's wrappers: the plain free strategy's own run().
            return super(ansible_mitogen.strategy.StrategyMixin, self).run(iterator, play_context)
        return super().run(iterator, play_context, result)
