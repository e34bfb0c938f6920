"""kit_checks: a role's input checks in one task.

Each check is what one `ansible.builtin.assert` task was: `that` (a condition or a list of
them), `msg` (the error, naming the variable and what to change), and an optional `name` and
`when`. The
checks run in order and stop at the first one that fails, as a list of assert tasks did, so a
later check may rely on an earlier one. A check's `msg` is only templated when it fails, so it
may use values that only make sense then.

One task instead of one per check: Ansible's cost is per task and host (a worker process, the
callbacks), and the preflight play runs every check on every host on every run.

    - name: Check the Redis settings
      kit_checks:
        checks:
          - that: redis_broker_port | int > 0
            msg: "redis_broker_port is '{{ redis_broker_port }}': ..."
"""

from __future__ import annotations

import typing as t

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """Evaluate a list of checks in order; fail with the first failing check's message."""

    _requires_connection = False

    @classmethod
    def finalize_task_arg(cls, name: str, value: t.Any, templar: t.Any, context: t.Any) -> t.Any:
        # The checks are templated one by one in run(): a failing check's message is rendered
        # only when it fails, and the conditions are evaluated as conditions.
        if name == "checks":
            return value
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        checks = self._task.args.get("checks")
        unknown = set(self._task.args) - {"checks"}
        if unknown or not isinstance(checks, list) or not checks:
            raise AnsibleActionFail("kit_checks takes one argument, checks: a non-empty list of {name, that, msg, when}")
        for index, check in enumerate(checks):
            if not isinstance(check, dict) or "that" not in check or "msg" not in check \
                    or set(check) - {"name", "that", "msg", "when"}:
                raise AnsibleActionFail("kit_checks: check %d must be a mapping of that, msg and optional name and when"
                                        % index)
            if not all(self._templar.evaluate_conditional(conditional=c) for c in _listify(check.get("when", []))):
                continue
            for that in _listify(check["that"]):
                if not self._templar.evaluate_conditional(conditional=that):
                    result.update(failed=True, check=check.get("name", index), assertion=that, evaluated_to=False,
                                  msg=self._templar.template(check["msg"]))
                    return result
        result.update(changed=False, msg="All %d checks passed" % len(checks))
        return result


def _listify(value: t.Any) -> list:
    return value if isinstance(value, list) else [value]
