"""Mitogen's linear strategy, found by ansible.cfg's strategy_plugins (the mitogen package from
requirements.txt is installed in the controller's virtualenv)."""

import ansible_mitogen.plugins.strategy.mitogen_linear as _mitogen

StrategyModule = _mitogen.StrategyModule
