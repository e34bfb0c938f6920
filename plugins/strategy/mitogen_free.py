"""Mitogen's free strategy (the mitogen package of requirements.txt), found through ansible.cfg's
strategy_plugins. A play on the controller itself (connection: local, as Molecule's create and
destroy playbooks) runs as plain Ansible: under Mitogen, community.docker tasks run with async
never report back to async_status."""

import ansible_mitogen.strategy
from ansible_mitogen.plugins.strategy import mitogen_free as _mitogen


class StrategyModule(_mitogen.StrategyModule):
    def run(self, iterator, play_context, result=0):
        if iterator._play.connection == "local":
            # Skips Mitogen's wrappers: the plain free strategy's own run().
            return super(ansible_mitogen.strategy.StrategyMixin, self).run(iterator, play_context)
        return super().run(iterator, play_context, result)
