"""kit_checks: a role's input checks in one task.

Each check is what one `ansible.builtin.assert` task was: `that` (a condition or a list of
them), `msg` (the error, naming the variable and what to change), and an optional `name` and
`when`. The
checks run in order and stop at the first one that fails, as a list of assert tasks did, so a
later check may rely on an earlier one. A check's `msg` is only templated when it fails, so it
may use values that only make sense then.

With `validate: ENTRY`, the task first validates the variables against entry point ENTRY of its
own role's argument specs (meta/argument_specs.yml), as the task Ansible puts before a role's
tasks does: the same validator and the same "Validation of arguments failed" message. The
preflight play imports each role with `rolespec_validate: false` and lets its checks task
validate, so that a role costs one task there instead of two.

One task instead of one per check: Ansible's cost is per task and host (a worker process, the
callbacks), and the preflight play runs every check on every host on every run.

    - name: Check the Redis settings
      kit_checks:
        checks:
          - that: redis_broker_port | int > 0
            msg: "redis_broker_port is '{{ redis_broker_port }}': ..."
        validate: preflight
"""

from __future__ import annotations

import os
import typing as t

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
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
        unknown = set(self._task.args) - {"checks", "validate"}
        if unknown or not isinstance(checks, list) or not checks:
            raise AnsibleActionFail("kit_checks takes checks (a non-empty list of {name, that, msg, when}) and "
                                    "optionally validate (an entry point of the role's argument specs)")
        entry = self._task.args.get("validate")
        if entry:
            spec, errors = self._validate(entry, task_vars or {})
            if errors:
                # As Ansible's validate_argument_spec reports it: the spec's descriptions say
                # which inventory variable a derived one comes from.
                result.update(failed=True, argument_errors=errors, argument_spec_data=spec,
                              msg="Validation of arguments failed:\n%s" % "\n".join(errors))
                return result
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


    def _validate(self, entry: str, task_vars: dict) -> tuple[dict, list]:
        """The options of its role's argument spec ENTRY, and the task's variables' errors."""
        role = self._task._role
        if role is None:
            raise AnsibleActionFail("kit_checks: validate needs a task of a role")
        path = os.path.join(role._role_path, "meta", "argument_specs.yml")
        specs = (self._loader.load_from_file(path) or {}).get("argument_specs", {})
        if entry not in specs:
            raise AnsibleActionFail("kit_checks: %s has no entry point %r" % (path, entry))
        spec = specs[entry].get("options", {})
        provided = self._templar.template({name: task_vars[name] for name in spec if name in task_vars})
        return spec, ArgumentSpecValidator(spec).validate(provided, validate_role_argument_spec=True).error_messages


def _listify(value: t.Any) -> list:
    return value if isinstance(value, list) else [value]
