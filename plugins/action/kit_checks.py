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

With `forms`, a mapping of variable names to forms (FORMS below: path, address, port,
service_port, number, timezone, secret, account, group, module, certificate, private_key), the task checks each variable's value
for its form before its checks, and fails naming every variable that is not of its form and
what to give instead; a secret's value is never shown. A form check holds the whole value, to
its last character: Python's `$`, which the `match` test uses, also matches before a final
newline, so that "/opt/celery\n" passed a path pattern and reached a unit file as two lines.
A variable that cannot be resolved yet (it needs facts, which preflight does not gather) is left
to the task that uses it. With `validate`, every variable of the entry point is also refused
when it holds a newline or another control character anywhere (except those in `multi_line`). scripts/role-docs writes the table of every role's forms into the
README.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing as t
import zoneinfo

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase


# System accounts and groups of Debian and of the servers the kit installs: the kit's account is
# its own, never one of these (it would rewrite the account, or run Celery with its rights).
SYSTEM_ACCOUNTS = {
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
    "backup", "list", "irc", "gnats", "nobody", "nogroup", "messagebus", "sshd", "postgres", "redis", "rabbitmq",
    "ntp", "syslog", "uuidd", "tss", "polkitd", "avahi", "dnsmasq", "tcpdump", "statd", "postfix", "Debian-exim",
}
# Groups whose members may read secrets, raw disks or the journal, or become root.
PRIVILEGED_GROUPS = {
    "root", "shadow", "disk", "sudo", "adm", "docker", "wheel", "staff", "kmem", "tty", "lxd", "libvirt",
    "systemd-journal", "sys", "admin", "operator", "utmp", "ssl-cert", "src", "dialout", "video", "input",
}
# The example inventories' placeholders, and passwords any scanner tries first.
PLACEHOLDERS = re.compile(r"change[-_ ]?me|^(password|secret|changeit|guest|admin|celery|123456+|x+)$", re.I)
HOSTNAME = re.compile(r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")


def _port(value: t.Any, low: int) -> bool:
    text = str(value)
    return text.isascii() and text.isdigit() and low <= int(text) <= 65535


def _address(value: t.Any) -> bool:
    text = str(value)
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return bool(HOSTNAME.match(text))


def _timezone(value: t.Any) -> bool:
    return isinstance(value, str) and value in zoneinfo.available_timezones()


def _secret(value: t.Any) -> bool:
    """An empty secret passes: the role's own check says where to set it."""
    if value == "":
        return True
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    return (bool(text) and text == text.strip() and not any(ord(c) < 32 or ord(c) == 127 for c in text)
            and not PLACEHOLDERS.search(text))


def _pem(label: str) -> t.Callable[[t.Any], bool]:
    """PEM text of LABEL (CERTIFICATE; PRIVATE KEY, also RSA or EC), or empty: a TLS setting
    that is off needs none, and the role's own check says which are missing when it is on."""
    pattern = re.compile(r"\s*-----BEGIN %s-----\r?\n.+\n-----END %s-----\s*\Z" % (label, label), re.S)
    return lambda v: v == "" or (isinstance(v, str) and pattern.match(v) is not None)


def _number(value: t.Any) -> bool:
    """A number, or a string Ansible reads as one ("0.5" from -e); never a bool."""
    if isinstance(value, bool):
        return False
    try:
        number = float(str(value))
    except ValueError:
        return False
    return number >= 0 and number == number and number != float("inf")


# form: (test, what to give instead). The tests take the resolved value.
FORMS = {
    "path": (lambda v: isinstance(v, str) and re.match(r"/[A-Za-z0-9_./-]*\Z", v) is not None and "/../" not in v + "/",
             "an absolute path of letters, digits and _ . / -"),
    "address": (_address, "an IPv4 or IPv6 address or a host name"),
    "port": (lambda v: _port(v, 1), "a TCP port from 1 to 65535"),
    "service_port": (lambda v: _port(v, 1024),
                     "a TCP port from 1024 to 65535 (the service runs unprivileged and cannot bind below 1024)"),
    "number": (_number, "a number of 0 or more, such as 300 or 0.1 (no unit)"),
    "timezone": (_timezone, "an IANA time zone name, such as UTC or Europe/Paris"),
    "secret": (_secret, "a secret with no leading or trailing whitespace and no control character, and not a "
                        "placeholder such as change-me: point it at a vault_ variable with a long random value"),
    "account": (lambda v: isinstance(v, str) and NAME.match(v) is not None and v not in SYSTEM_ACCOUNTS,
                "a name of its own for the service account (lower-case letters, digits, _ and -, a letter first), "
                "not an account the system has already (root, daemon, www-data, postgres, ...)"),
    "group": (lambda v: isinstance(v, str) and NAME.match(v) is not None and v not in PRIVILEGED_GROUPS
              and v not in SYSTEM_ACCOUNTS,
              "a group of its own for the service account (lower-case letters, digits, _ and -, a letter first), "
              "not a system or privileged group (root, shadow, disk, sudo, adm, docker, ...)"),
    "module": (lambda v: isinstance(v, str) and re.match(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
                                                         r"(:[A-Za-z_][A-Za-z0-9_]*)?\Z", v) is not None,
               "a module, a module path or module:attribute, such as proj, proj.celery or proj.celery:app"),
    "certificate": (_pem("CERTIFICATE"),
                    "PEM text of a certificate (-----BEGIN CERTIFICATE----- to -----END CERTIFICATE-----), "
                    "for example from lookup('file', 'tls/broker1.crt')"),
    "private_key": (_pem("(?:RSA |EC )?PRIVATE KEY"),
                    "PEM text of a private key (-----BEGIN PRIVATE KEY----- to -----END PRIVATE KEY-----, also "
                    "RSA or EC), from a vault_ variable"),
}


def form_problems(values: dict, forms: dict) -> list:
    """One message per variable whose value is not of its form, in the order of `forms`."""
    problems = []
    for name, form in forms.items():
        if name not in values:
            continue
        test, rule = FORMS[form]
        value = values[name]
        if test(value):
            continue
        shown = "is not of its form" if form in ("secret", "private_key") else "is %s" % _shortened(repr(value))
        problems.append("%s %s: give %s." % (name, shown, rule))
    return problems


def _shortened(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def control_characters(values: dict, multi_line: t.Iterable = ()) -> list:
    """One message per variable holding a newline or another control character anywhere in it
    (a list item, a mapping's value or key), except the variables in multi_line: the kit writes
    values into unit files, environment files and command lines, one line each."""
    problems = []
    for name in sorted(values):
        if name in multi_line:
            continue
        where = _control_character_at(values[name], name)
        if where:
            problems.append("%s holds a newline or another control character%s: every value the kit writes into "
                            "a unit, an environment file or a command is one line; remove it (a pasted value "
                            "often ends with a newline)." % (name, "" if where == name else " (at %s)" % where))
    return problems


def _control_character_at(value: t.Any, where: str) -> str:
    if isinstance(value, str):
        return where if any(ord(c) < 32 or ord(c) == 127 for c in value) else ""
    if isinstance(value, dict):
        for key, item in value.items():
            found = _control_character_at(key, "%s key %r" % (where, key)) or \
                _control_character_at(item, "%s[%r]" % (where, key))
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _control_character_at(item, "%s[%d]" % (where, index))
            if found:
                return found
    return ""


class ActionModule(ActionBase):
    """Evaluate a list of checks in order; fail with the first failing check's message."""

    _requires_connection = False

    @classmethod
    def finalize_task_arg(cls, name: str, value: t.Any, templar: t.Any, context: t.Any) -> t.Any:
        # The checks are templated one by one in run(): a failing check's message is rendered
        # only when it fails, and the conditions are evaluated as conditions.
        if name in ("checks", "forms"):
            return value
        return super().finalize_task_arg(name, value, templar, context)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        checks = self._task.args.get("checks")
        forms = self._task.args.get("forms", {})
        unknown = set(self._task.args) - {"checks", "validate", "forms", "multi_line"}
        if isinstance(forms, str):
            forms = self._templar.template(forms)
        if not isinstance(forms, dict) or set(forms.values()) - set(FORMS):
            raise AnsibleActionFail("kit_checks: forms maps variable names to one of %s" % ", ".join(sorted(FORMS)))
        if unknown or not isinstance(checks, list) or not checks:
            raise AnsibleActionFail("kit_checks takes checks (a non-empty list of {name, that, msg, when}) and "
                                    "optionally validate (an entry point of the role's argument specs)")
        entry = self._task.args.get("validate")
        if entry:
            spec, errors, provided = self._validate(entry, task_vars or {})
            errors = errors or control_characters(provided, self._task.args.get("multi_line", []))
            if errors:
                # As Ansible's validate_argument_spec reports it: the spec's descriptions say
                # which inventory variable a derived one comes from.
                result.update(failed=True, argument_errors=errors, argument_spec_data=spec,
                              msg="Validation of arguments failed:\n%s" % "\n".join(errors))
                return result
        problems = form_problems(self._resolved(forms, task_vars or {}), forms)
        if problems:
            result.update(failed=True, check="forms", msg=" ".join(problems))
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


    def _resolved(self, forms: dict, task_vars: dict) -> dict:
        """The values of the variables in `forms` that can be resolved now."""
        values = {}
        for name in forms:
            if name not in task_vars:
                continue
            try:
                values[name] = self._templar.template(task_vars[name])
            except Exception:  # noqa: BLE001 - needs facts or another host: the task that uses it will say
                continue
        return values

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
        errors = ArgumentSpecValidator(spec).validate(provided, validate_role_argument_spec=True).error_messages
        return spec, errors, provided


def _listify(value: t.Any) -> list:
    return value if isinstance(value, list) else [value]
