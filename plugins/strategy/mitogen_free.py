"""Mitogen's free strategy, set up as mitogen_linear.py sets up the linear one (see there): a
play on the controller itself runs as plain Ansible, and Mitogen does not pin processes to CPUs."""

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
