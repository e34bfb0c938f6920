"""plugins/action/kit_checks.py, run in-process with Ansible's own objects.

Each test loads a one-task play from YAML text trusted as a template (as a playbook file is),
post-validates the task with the task's variables (which calls the plugin's
finalize_task_arg), and runs the action as TaskExecutor does: with a Templar over the same
variables. Only the connection (which the action does not need) and the task's role (only its
path is read) are stand-ins. TemplateEngine and Templar._from_template_engine are ansible-core
2.19 internals, the same ones TaskExecutor uses."""

import os
import re
import types

import pytest
import yaml
from ansible._internal._templating._engine import TemplateEngine
from ansible.errors import AnsibleActionFail, AnsibleBrokenConditionalError, AnsibleUndefinedVariable
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.play import Play
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import action_loader, init_plugin_loader
from ansible.template import Templar, trust_as_template

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER_ROLE = os.path.join(ROOT, "roles", "celery_worker")

# The variables celery_worker's argument spec requires, valid.
WORKER_VARS = {"celery_worker_nodes": ["worker1"], "celery_worker_queues": ["celery"], "celery_worker_time_limit": 300}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    init_plugin_loader()
    action_loader.add_directory(os.path.join(ROOT, "plugins", "action"))


def run(args, variables=None, role_path=None):
    """Run one kit_checks task with these args; the task's variables are also its task_vars."""
    variables = dict(variables or {})
    loader = DataLoader()
    play_yaml = yaml.safe_dump({"hosts": "localhost", "gather_facts": False,
                                "tasks": [{"name": "Check", "kit_checks": args}]})
    play = Play.load(loader.load(trust_as_template(play_yaml)), loader=loader)
    task = play.get_tasks()[0][0]
    engine = TemplateEngine(loader=loader, variables=variables)
    task.post_validate(templar=engine)
    if role_path:
        task._role = types.SimpleNamespace(_role_path=role_path)
    action = action_loader.get("kit_checks", task=task, play_context=PlayContext(), loader=loader,
                               templar=Templar._from_template_engine(engine), shared_loader_obj=None,
                               connection=types.SimpleNamespace(_shell=types.SimpleNamespace(tmpdir=None)))
    return action.run(task_vars=variables)


def check(that, msg="failed", **more):
    return dict({"that": that, "msg": msg}, **more)


# --- Checks in order --------------------------------------------------------------------------

def test_all_checks_pass():
    result = run({"checks": [check("a == 1"), check(["b > 0", "b < 10"])]}, {"a": 1, "b": 5})
    assert result == {"changed": False, "msg": "All 2 checks passed"}


def test_the_first_failing_checks_message_wins():
    result = run({"checks": [check("a == 1", "first", name="A"), check("a == 2", "second", name="B"),
                             check("a == 3", "third", name="C")]}, {"a": 1})
    assert result["failed"] is True
    assert (result["check"], result["msg"]) == ("B", "second")


def test_the_failing_assertion_of_a_list_is_reported():
    result = run({"checks": [check(["a == 1", "b == 1", "b == 2"])]}, {"a": 1, "b": 2})
    assert (result["assertion"], result["evaluated_to"]) == ("b == 1", False)


def test_a_check_without_a_name_is_named_by_its_index():
    result = run({"checks": [check("true"), check("false")]})
    assert result["check"] == 1


def test_a_later_check_may_rely_on_an_earlier_one():
    """As with a list of assert tasks: the second check would fail to template without x."""
    result = run({"checks": [check("x is defined", "x is not set"), check("x | int > 0", "x is {{ x }}")]})
    assert result["msg"] == "x is not set"


def test_a_condition_that_cannot_be_evaluated_is_an_error_not_a_pass():
    with pytest.raises(AnsibleUndefinedVariable, match="'x' is undefined"):
        run({"checks": [check("x | int > 0")]})


def test_a_condition_must_be_a_boolean_not_a_truthy_value():
    with pytest.raises(AnsibleBrokenConditionalError, match="Conditionals must have a boolean result"):
        run({"checks": [check("x")]}, {"x": "yes"})


# --- when ------------------------------------------------------------------------------------------

def test_when_false_skips_the_check():
    result = run({"checks": [check("a == 2", "skipped", when="a == 3"), check("a == 1")]}, {"a": 1})
    assert result == {"changed": False, "msg": "All 2 checks passed"}


def test_when_true_runs_the_check():
    result = run({"checks": [check("a == 2", "ran", when="a == 1")]}, {"a": 1})
    assert result["msg"] == "ran"


def test_a_when_list_needs_every_condition():
    checks = [check("false", "ran", when=["a == 1", "a == 2"])]
    assert "failed" not in run({"checks": checks}, {"a": 1})


def test_a_skipped_check_does_not_evaluate_its_that():
    """The `when` guards a condition that needs a variable it checks for."""
    result = run({"checks": [check("x | int > 0", "x is {{ x }}", when="x is defined")]})
    assert "failed" not in result


# --- msg -----------------------------------------------------------------------------------------

def test_the_failing_checks_msg_is_templated():
    result = run({"checks": [check("port | int > 0", "redis_broker_port is '{{ port }}': set a port")]},
                 {"port": "zero"})
    assert result["msg"] == "redis_broker_port is 'zero': set a port"


def test_a_passing_checks_msg_is_never_templated():
    """Its msg names a variable that is undefined; templated, it would raise."""
    result = run({"checks": [check("true", "{{ undefined_variable.attr }}"), check("true")]})
    assert result["msg"] == "All 2 checks passed"


def test_a_skipped_checks_msg_is_never_templated():
    result = run({"checks": [check("false", "{{ undefined_variable.attr }}", when="false")]})
    assert "failed" not in result


def test_the_other_args_are_templated_at_post_validate():
    """finalize_task_arg leaves only `checks` to run(): `validate` is templated as usual."""
    result = run({"validate": "{{ entry }}", "checks": [check("true")]},
                 dict(WORKER_VARS, entry="preflight", celery_worker_concurrency="ten"), WORKER_ROLE)
    assert result["msg"].startswith("Validation of arguments failed")


# --- validate: the role's meta/argument_specs.yml -------------------------------------------------

def test_validate_passes_good_variables_on_to_the_checks():
    result = run({"validate": "preflight", "checks": [check("true"), check("false", "the check ran")]},
                 dict(WORKER_VARS, celery_worker_concurrency=4), WORKER_ROLE)
    assert result["msg"] == "the check ran"


def test_validate_catches_a_wrong_type_before_any_check():
    result = run({"validate": "preflight", "checks": [check("false", "the check ran")]},
                 dict(WORKER_VARS, celery_worker_concurrency="ten"), WORKER_ROLE)
    error = ("argument 'celery_worker_concurrency' is of type str and we were unable to convert to int: "
             "\"'ten'\" cannot be converted to an int")
    assert result["failed"] is True
    assert result["argument_errors"] == [error]
    assert result["msg"] == "Validation of arguments failed:\n" + error
    assert result["argument_spec_data"]["celery_worker_concurrency"]["type"] == "int"


def test_validate_catches_a_choice_and_a_missing_required_variable():
    variables = dict(WORKER_VARS, celery_worker_pool="processes")
    del variables["celery_worker_time_limit"]
    errors = run({"validate": "main", "checks": [check("true")]}, variables, WORKER_ROLE)["argument_errors"]
    assert errors[0] == "missing required arguments: celery_worker_time_limit"
    assert errors[1].startswith("value of celery_worker_pool must be one of: prefork, threads, solo")


def test_validate_converts_as_ansible_does():
    """A string of digits is an int to the spec (the checks see the variable as it is)."""
    result = run({"validate": "preflight", "checks": [check("celery_worker_concurrency == '4'", "a string")]},
                 dict(WORKER_VARS, celery_worker_concurrency="4"), WORKER_ROLE)
    assert result["msg"] == "All 1 checks passed"


def test_validate_templates_the_variables_first():
    """An inventory value that is a template is validated by what it renders to."""
    variables = dict(WORKER_VARS, celery_worker_concurrency=trust_as_template("{{ size }}"))
    assert run({"validate": "preflight", "checks": [check("true")]}, dict(variables, size=4), WORKER_ROLE)[
        "msg"] == "All 1 checks passed"
    assert run({"validate": "preflight", "checks": [check("true")]}, dict(variables, size="ten"), WORKER_ROLE)[
        "argument_errors"][0].startswith("argument 'celery_worker_concurrency' is of type str")


def test_validate_an_unknown_entry_point():
    with pytest.raises(AnsibleActionFail, match="argument_specs.yml has no entry point 'nope'"):
        run({"validate": "nope", "checks": [check("true")]}, WORKER_VARS, WORKER_ROLE)


def test_validate_needs_a_role():
    with pytest.raises(AnsibleActionFail, match="validate needs a task of a role"):
        run({"validate": "preflight", "checks": [check("true")]}, WORKER_VARS)


@pytest.mark.parametrize("role", sorted(os.listdir(os.path.join(ROOT, "roles"))))
def test_every_roles_preflight_entry_point_loads(role):
    """Each role's preflight (or main) entry point is found; missing variables are all it reports."""
    path = os.path.join(ROOT, "roles", role)
    with open(os.path.join(path, "meta", "argument_specs.yml")) as f:
        entries = yaml.safe_load(f)["argument_specs"]
    entry = "preflight" if "preflight" in entries else "main"
    result = run({"validate": entry, "checks": [check("true")]}, {}, path)
    assert all(e.startswith("missing required arguments") for e in result.get("argument_errors", []))


# --- Bad task arguments ---------------------------------------------------------------------------

MESSAGE_ARGS = "kit_checks takes checks (a non-empty list of {name, that, msg, when})"


@pytest.mark.parametrize("args", [
    {},
    {"validate": "preflight"},
    {"checks": []},
    {"checks": "a == 1"},
    {"checks": {"that": "true", "msg": "x"}},
    {"checks": [check("true")], "check_mode": True},
    {"checks": [check("true")], "that": "true"},
])
def test_bad_task_args(args):
    with pytest.raises(AnsibleActionFail, match="^" + re.escape(MESSAGE_ARGS)):
        run(args)


@pytest.mark.parametrize("bad", [
    "a == 1",
    {"that": "true"},
    {"msg": "x"},
    {"that": "true", "msg": "x", "message": "y"},
    {"that": "true", "msg": "x", "assert": "y"},
])
def test_a_bad_check_raises_naming_its_index(bad):
    with pytest.raises(AnsibleActionFail, match="kit_checks: check 1 must be a mapping of that, msg"):
        run({"checks": [check("true"), bad]})


# --- Forms --------------------------------------------------------------------------------------

def forms(variables, **names):
    return run({"forms": names, "checks": [check("true")]}, variables)


@pytest.mark.parametrize("form, value", [
    ("path", "/opt/celery"), ("path", "/var/lib/celery-kit_2/x.y"),
    ("address", "10.0.0.5"), ("address", "fe80::1"), ("address", "broker-1.example.com"), ("address", "redis"),
    ("port", 1), ("port", "6379"), ("port", 65535), ("service_port", 1024), ("service_port", "5555"),
    ("timezone", "UTC"), ("timezone", "Europe/Paris"), ("timezone", "America/Argentina/Buenos_Aires"),
    ("secret", "s3cret 'with' $pace and ;"), ("secret", 123456789),
    ("account", "celery"), ("account", "app_worker-2"), ("group", "celery"),
    ("module", "proj"), ("module", "proj.celery:app"),
])
def test_values_of_their_form_pass(form, value):
    assert forms({"v": value}, v=form) == {"changed": False, "msg": "All 1 checks passed"}


@pytest.mark.parametrize("form, value, says", [
    ("path", "/opt/celery\n", "an absolute path"),
    ("path", "/opt/celery\nExecStartPre=/bin/sh", "an absolute path"),
    ("path", "opt/celery", "an absolute path"),
    ("path", "/opt/../etc", "an absolute path"),
    ("path", "/opt/cel ery", "an absolute path"),
    ("address", "10.0.0.5\n", "an IPv4 or IPv6 address"),
    ("address", "host name", "an IPv4 or IPv6 address"),
    ("address", "-rf", "an IPv4 or IPv6 address"),
    ("port", 0, "from 1 to 65535"), ("port", 65536, "from 1 to 65535"), ("port", "80\n", "from 1 to 65535"),
    ("port", "６３７９", "from 1 to 65535"),
    ("service_port", 80, "from 1024 to 65535"), ("service_port", 1023, "cannot bind below 1024"),
    ("timezone", "Mars/Olympus", "an IANA time zone name"), ("timezone", "UTC\n", "an IANA time zone name"),
    ("timezone", "../../etc/passwd", "an IANA time zone name"),
    ("account", "root", "not an account the system has already"),
    ("account", "www-data", "not an account the system has already"),
    ("account", "postgres", "not an account the system has already"),
    ("account", "Celery", "lower-case letters"), ("account", "celery\n", "lower-case letters"),
    ("account", "_apt", "a letter first"),
    ("group", "shadow", "not a system or privileged group"), ("group", "docker", "privileged group"),
    ("group", "sudo", "privileged group"), ("group", "root", "privileged group"),
    ("module", "proj celery", "a module"),
])
def test_values_not_of_their_form_are_named(form, value, says):
    result = forms({"the_var": value}, the_var=form)
    assert result["failed"] is True and result["check"] == "forms"
    assert result["msg"].startswith("the_var is %r: give " % (value,)) and says in result["msg"]


@pytest.mark.parametrize("value", ["s3cret\n", " s3cret", "s3cret ", "s3c\tret", "change-me-to-a-long-random-string",
                                   "CHANGEME", "password", "guest", None, True, ["s3cret"]])
def test_bad_secrets_are_refused_and_never_shown(value):
    result = forms({"redis_broker_password": value}, redis_broker_password="secret")
    assert result["msg"].startswith("redis_broker_password is not of its form: give a secret with no leading")
    assert "s3c" not in result["msg"]


CERT = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize("form, value", [
    ("certificate", ""), ("certificate", CERT), ("certificate", "  " + CERT.replace("\n", "\r\n")),
    ("certificate", CERT + CERT), ("private_key", ""), ("private_key", KEY),
    ("private_key", KEY.replace("PRIVATE KEY", "EC PRIVATE KEY")),
])
def test_pem_text_or_nothing_passes(form, value):
    assert forms({"v": value}, v=form)["msg"] == "All 1 checks passed"


@pytest.mark.parametrize("value", [
    "/etc/ssl/certs/broker1.pem",                   # a path where the text belongs
    CERT[:40],                                      # a file cut short
    KEY,                                            # the key where the certificate belongs
    "-----BEGIN CERTIFICATE-----",
    "Bag Attributes\n" + CERT,                      # openssl pkcs12's preamble
])
def test_a_certificate_that_is_not_pem_text_is_named_shortened(value):
    result = forms({"cert": value}, cert="certificate")
    assert result["msg"].startswith("cert is " + repr(value)[:20]) and "give PEM text of a certificate" in result["msg"]
    assert len(result["msg"].split(": give")[0]) <= len("cert is ") + 80


@pytest.mark.parametrize("value", ["secret-key", CERT, KEY.replace("-----END PRIVATE KEY-----", ""), None])
def test_a_private_key_not_of_its_form_is_never_shown(value):
    result = forms({"key": value}, key="private_key")
    assert result["msg"].startswith("key is not of its form: give PEM text of a private key")
    assert "MII" not in result["msg"] and "secret-key" not in result["msg"]


def test_every_variable_not_of_its_form_is_named_in_order():
    result = forms({"a": "/ok", "b": "relative", "c": 0}, a="path", b="path", c="port")
    assert result["msg"] == ("b is 'relative': give an absolute path of letters, digits and _ . / -. "
                             "c is 0: give a TCP port from 1 to 65535.")


def test_forms_come_before_the_checks():
    result = run({"forms": {"p": "port"}, "checks": [check("false", "the check")]}, {"p": 0})
    assert result["check"] == "forms"


def test_a_variable_that_needs_facts_is_left_to_its_task():
    variables = {"addr": trust_as_template("{{ ansible_facts['default_ipv4']['address'] }}"), "port": 5555}
    assert forms(variables, addr="address", port="service_port")["msg"] == "All 1 checks passed"


def test_an_unknown_form_is_a_task_error():
    with pytest.raises(AnsibleActionFail, match="kit_checks: forms maps variable names to one of"):
        forms({"v": 1}, v="colour")


# --- One line each (validate) ---------------------------------------------------------------------

@pytest.mark.parametrize("name, value, at", [
    ("celery_worker_queues", ["celery", "hipri\nExecStartPre=/bin/touch /tmp/pwned"], "celery_worker_queues[1]"),
    ("celery_worker_nodes", [{"name": "w1", "queues": ["a\r"]}], "celery_worker_nodes[0]['queues'][0]"),
    ("celery_worker_extra_opts", "--without-gossip\n", "celery_worker_extra_opts"),
    ("celery_worker_node_opts", {"w1\n": "--x"}, "celery_worker_node_opts key 'w1\\n'"),
])
def test_a_newline_anywhere_in_a_roles_variable_is_refused(name, value, at):
    result = run({"validate": "preflight", "checks": [check("true")]}, dict(WORKER_VARS, **{name: value}), WORKER_ROLE)
    assert result["failed"] is True
    assert result["msg"].startswith("Validation of arguments failed:\n%s holds a newline or another control character"
                                    % name)
    assert ("(at %s)" % at in result["msg"]) or at == name
    assert "pwned" not in result["msg"]


def test_a_variable_may_be_let_hold_lines():
    variables = dict(WORKER_VARS, celery_worker_extra_opts="--a\n--b")
    result = run({"validate": "preflight", "multi_line": ["celery_worker_extra_opts"], "checks": [check("true")]},
                 variables, WORKER_ROLE)
    assert result == {"changed": False, "msg": "All 1 checks passed"}
