"""Each role's public surface, checked without a host:
- every variable in defaults/main.yml is described in meta/argument_specs.yml, and every option
  the specs describe has a default (or is marked required), as prometheus-community's roles
  check theirs: no knob is documented and dead, or live and undocumented;
- `ansible-doc -t role` can read every role, and each role's README holds the variable table
  scripts/role-docs writes from the same specs;
- no private `__` name crosses a boundary: a `__` name is used in one role only (or in one
  playbook only, for a play's own variables). Roles talk through public, documented names."""

import os
import re
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLES = sorted(d for d in os.listdir(os.path.join(ROOT, "roles")) if not d.startswith("."))


def load(*parts):
    path = os.path.join(ROOT, *parts)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return yaml.safe_load(handle)


def spec_options(role):
    specs = (load("roles", role, "meta", "argument_specs.yml") or {}).get("argument_specs", {})
    options = {}
    for entry in specs.values():
        options.update(entry.get("options") or {})
    return options


@pytest.mark.parametrize("role", ROLES)
def test_defaults_and_argument_specs_agree(role):
    defaults = set(load("roles", role, "defaults", "main.yml") or {})
    options = spec_options(role)
    undocumented = sorted(defaults - set(options))
    assert not undocumented, "%s: in defaults/main.yml, not in meta/argument_specs.yml: %s" % (role, undocumented)
    dead = sorted(name for name, spec in options.items()
                  if name not in defaults and not (spec or {}).get("required"))
    assert not dead, "%s: described in meta/argument_specs.yml, with no default and not required: %s" % (role, dead)


@pytest.mark.parametrize("role", ROLES)
def test_ansible_doc_reads_the_role(role):
    doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    proc = subprocess.run([doc, "-t", "role", "-r", os.path.join(ROOT, "roles"), role],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ENTRY POINT" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_role_readmes_hold_the_current_variable_tables():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "role-docs"), "--check"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def owners():
    """`__` name -> the places that use it: roles/<role>, or playbooks/<file> for a play's own."""
    places = {}
    for top in ("roles", "playbooks", "templates", "molecule", "site.yml"):
        base = os.path.join(ROOT, top)
        files = [base] if os.path.isfile(base) else [
            os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs if f.endswith((".yml", ".j2", ".py"))]
        for path in files:
            rel = os.path.relpath(path, ROOT).split(os.sep)
            place = "/".join(rel[:2]) if rel[0] == "roles" else "/".join(rel)
            with open(path) as handle:
                text = handle.read()
            for name in set(re.findall(r"(?<![A-Za-z0-9_])__[a-z][a-z0-9_]*", text)):
                if not name.endswith("__"):  # Python's own __file__, __name__, ...
                    places.setdefault(name, set()).add(place)
    return places


def test_no_private_name_crosses_a_role_boundary():
    crossing = {name: sorted(where) for name, where in owners().items() if len(where) > 1}
    assert not crossing, "private names used in more than one role or playbook:\n" + "\n".join(
        "  %s: %s" % (name, ", ".join(where)) for name, where in sorted(crossing.items()))
