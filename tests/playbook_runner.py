"""ansible-playbook for the fast tests (test_bad_input.py, test_quoting.py, test_templates.py),
without a Python start-up per run.

One server process (this file run as a script) imports Ansible once, then forks a child for
each run. The child is `ansible-playbook ARGS` from its `main()` on: the same CLI code parses
the arguments, builds the loader, the inventory and the variables, runs the plays with the
strategies and plugins of ansible.cfg and prints through the default callback, with its stdout
and stderr on two files, and its exit code is the run's. The caller gets what
subprocess.run(capture_output=True) gave: the exit code, then stdout followed by stderr.
(Ansible reads ansible.cfg when it is imported: the server reads it once, with the environment
of the runs, ANSIBLE_CONFIG among it.)

Nothing a run sets outlives its child: context.CLIARGS, the plugin loaders and their caches,
the collection finder, Display's memory of the warnings and errors it has shown, the fact cache
(ANSIBLE_CACHE_PLUGIN=memory), the inventory and the variables all die with it, and the next
run forks from the server again. The server itself runs no play and reads no inventory: before
its first fork it only imports Ansible's modules, those a run would import anyway, under the
names the run imports them by (see _warm_up), so that neither the child nor each of the worker
processes Ansible forks for a task and host imports them again; the same for the roles' filter
plugins (with PYTHONDONTWRITEBYTECODE=1, as here, each worker would compile them from source).
Everything else of the kit (site.yml, the playbooks, the roles' tasks, vars and specs, plugins/)
each run reads anew.

The server is started with the environment and working directory of the first run and kept
while the following runs ask for the same ones; a run that asks for others gets a new server.
Its children share its hash seed (PYTHONHASHSEED): where a message lists a set (the valid
booleans of an argument spec error), its order is the same in every run of a session, where
separate processes each drew their own.
"""

import atexit
import glob
import gc
import importlib
import importlib.util
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

# --- the client, in the test process ---------------------------------------------------------


class Runner:
    """Runs ansible-playbook command lines in children of a server started on first use."""

    def __init__(self):
        self._proc = None
        self._key = None
        self._busy = False
        self.last_cpu_seconds = None
        atexit.register(self.close)

    def run(self, args, cwd, env, out_dir, timeout):
        """Run ARGS (["…/ansible-playbook", …]) in CWD with ENV as subprocess.run(ARGS, cwd=CWD,
        env=ENV, capture_output=True, text=True, timeout=TIMEOUT) did: return the exit code and
        stdout followed by stderr (also left in OUT_DIR/stdout and OUT_DIR/stderr)."""
        args = [str(a) for a in args]
        # A server serves the runs whose interpreter (the ansible-playbook script's), directory
        # and environment are its own: Ansible reads its settings from the environment when it
        # is imported. PYTEST_CURRENT_TEST, which pytest changes for each test, is the exception:
        # each child takes the environment of its run, that variable included.
        key = (_interpreter(args[0]), os.path.realpath(cwd),
               tuple(sorted((k, v) for k, v in env.items() if k not in _PER_RUN_VARIABLES)))
        if self._busy or self._proc is None or self._key != key or self._proc.poll() is not None:
            # (Busy: a run before this one was interrupted and its reply never read.)
            self._start(key, cwd, env)
        out_path = os.path.join(os.path.abspath(out_dir), "stdout")
        err_path = os.path.join(os.path.abspath(out_dir), "stderr")
        request = {"args": args, "cwd": os.path.abspath(cwd), "env": dict(env),
                   "stdout": out_path, "stderr": err_path}
        self._busy = True
        try:
            os.write(self._req, (json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            raise RuntimeError("the ansible-playbook server died:\n" + self._server_log()) from None
        rc = self._read_reply(args, timeout)
        self._busy = False
        with open(out_path, encoding="utf-8", errors="replace") as out, \
                open(err_path, encoding="utf-8", errors="replace") as err:
            return rc, out.read() + err.read()

    def _start(self, key, cwd, env):
        if self._busy:
            self._kill()
        else:
            self.close()
        req_r, self._req = os.pipe()
        self._resp, resp_w = os.pipe()
        # The server's stdout and stderr, and so the children's until they take their files, go
        # to a file: not a terminal, as the pipes of subprocess.run were not (Display sizes its
        # banners from fd 1). Its own session, so that a run past its timeout can be killed whole.
        self._log = tempfile.TemporaryFile(mode="w+", prefix="preflight_runner.")
        self._proc = subprocess.Popen(
            [key[0], os.path.abspath(__file__), str(req_r), str(resp_w)],
            cwd=cwd, env=env, pass_fds=(req_r, resp_w), stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        os.close(req_r)
        os.close(resp_w)
        self._key = key
        self._buf = b""
        self._busy = False

    def _read_reply(self, args, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._resp], [], [], left)[0]:
                self._kill()
                raise subprocess.TimeoutExpired(args, timeout)
            chunk = os.read(self._resp, 65536)
            if not chunk:
                log = self._server_log()
                self._kill()
                raise RuntimeError("the ansible-playbook server died:\n" + log)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply = json.loads(line)
        # The run's CPU time, its worker processes' included: for measuring.
        self.last_cpu_seconds = reply["cpu"]
        return reply["rc"]

    def _server_log(self):
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-6000:]

    def _kill(self):
        """Stop the server and the run it may be in."""
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.close()

    def close(self):
        """Stop the server: it exits when its request pipe closes, after the run it may be in."""
        if self._proc is None:
            return
        for fd in (self._req, self._resp):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._log.close()
        self._proc = None

    def render(self, playbook, filter_dirs, tmp_path, case_vars):
        """Run a render playbook of the fast tests (tests/render*.yml) on the controller with
        CASE_VARS as extra vars and render_dir=TMP_PATH/out; return that directory."""
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        case = tmp_path / "case.json"
        case.write_text(json.dumps(case_vars or {}))
        out = tmp_path / "out"
        out.mkdir()
        env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(root, "ansible.cfg"),
                   ANSIBLE_FILTER_PLUGINS=":".join(filter_dirs),
                   ANSIBLE_CACHE_PLUGIN="memory", ANSIBLE_LOCALHOST_WARNING="false")
        rc, output = self.run(
            [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), playbook,
             "-e", "@%s" % case, "-e", "render_dir=%s" % out,
             "-e", "ansible_python_interpreter=%s" % sys.executable],
            cwd=root, env=env, out_dir=tmp_path, timeout=120)
        assert rc == 0, output
        return out


# Environment variables that may differ from one run to the next of the same server.
_PER_RUN_VARIABLES = {"PYTEST_CURRENT_TEST"}


def _interpreter(script):
    """The interpreter named by SCRIPT's #! line, or this one."""
    try:
        with open(script, "rb") as f:
            line = f.readline(4096).decode()
    except (OSError, UnicodeDecodeError):
        return sys.executable
    words = line[2:].split() if line.startswith("#!") else []
    if len(words) == 1 and os.path.isabs(words[0]) and os.access(words[0], os.X_OK):
        return words[0]
    return sys.executable


# --- the server ------------------------------------------------------------------------------

# The modules a run of the preflight play imports after ansible-playbook's own imports, in the
# run's process or in its worker processes (found by comparing sys.modules before and after a
# run). Only these: importing more could change a run (a deprecated module, imported, adds a
# deprecation warning to its output). A name this Ansible lacks is skipped: the list only saves
# time, and a module left out is imported by the run itself as before.
_WARM_MODULES = [
    "ansible._internal._errors._task_timeout",
    "ansible._internal._json._profiles._inventory_legacy", "ansible.cli.scripts",
    "ansible.executor.process", "ansible.executor.process.worker",
    "ansible.executor.task_executor", "ansible.module_utils.connection", "ansible.modules",
    "ansible.parsing.yaml.dumper", "ansible.playbook.handler",
    "ansible.playbook.handler_task_include", "ansible.playbook.included_file",
    "ansible.playbook.role.include", "ansible.playbook.role_include",
    "ansible.playbook.task_include", "ansible.plugins.become.su", "ansible.plugins.become.sudo",
    "ansible.plugins.cache", "ansible.plugins.cache.memory", "ansible.plugins.callback.default",
    "ansible.plugins.callback.junit", "ansible.plugins.callback.minimal",
    "ansible.plugins.callback.oneline", "ansible.plugins.callback.tree",
    "ansible.plugins.connection", "ansible.plugins.connection._paramiko_ssh",
    "ansible.plugins.connection.local", "ansible.plugins.connection.paramiko_ssh",
    "ansible.plugins.connection.psrp", "ansible.plugins.connection.ssh",
    "ansible.plugins.connection.winrm", "ansible.plugins.doc_fragments",
    "ansible.plugins.doc_fragments.connection_pipelining",
    "ansible.plugins.doc_fragments.default_callback",
    "ansible.plugins.doc_fragments.result_format_callback",
    "ansible.plugins.doc_fragments.shell_common", "ansible.plugins.doc_fragments.shell_windows",
    "ansible.plugins.doc_fragments.vars_plugin_staging", "ansible.plugins.inventory",
    "ansible.plugins.inventory.auto", "ansible.plugins.inventory.host_list",
    "ansible.plugins.inventory.ini", "ansible.plugins.inventory.script",
    "ansible.plugins.inventory.toml", "ansible.plugins.inventory.yaml", "ansible.plugins.shell",
    "ansible.plugins.shell.cmd", "ansible.plugins.shell.powershell", "ansible.plugins.shell.sh",
    "ansible.plugins.strategy", "ansible.plugins.strategy.linear", "ansible.plugins.vars",
    "ansible.plugins.vars.host_group_vars", "ansible.utils._junit_xml", "ansible.utils.encrypt",
    "ansible.utils.hashing", "ansible.utils.shlex", "ansible.utils.unicode",
    "ansible.utils.version", "multiprocessing.popen_fork", "multiprocessing.synchronize",
]


def _warm_up():
    """Import what each run imports of Ansible and of the roles' filter plugins, before the first
    fork."""
    import ansible.cli.playbook  # noqa: F401  (what bin/ansible-playbook imports)

    for name in _WARM_MODULES:
        _try_import(name)

    # Filter and test plugins, Ansible's and the roles': every worker process loads every file of
    # them on its first filter or test (ansible/plugins/loader.py, Jinja2Loader), under a module
    # name made of the file's path and hash(path), and takes a module already in sys.modules under
    # that name as it is (PluginLoader._load_module_source). Hash seeds are inherited by forks, so
    # the names made here are the ones the workers look for; were the naming to change, or a path
    # to differ, the workers would only load the files themselves again.
    import ansible.plugins.filter
    import ansible.plugins.test
    from ansible import constants as C
    roles = {os.path.realpath(p) for p in [*C.DEFAULT_ROLES_PATH, os.path.join(os.getcwd(), "roles")]}
    for kind, package in (("filter", ansible.plugins.filter), ("test", ansible.plugins.test)):
        paths = set(glob.glob(os.path.join(os.path.dirname(package.__file__), "*.py")))
        for path in roles:
            paths.update(glob.glob(os.path.join(path, "*", kind + "_plugins", "*.py")))
        for path in sorted(paths):
            base = os.path.splitext(os.path.basename(path))[0]
            if base.startswith("_"):
                continue
            name = "ansible.plugins.%s.%s_%d" % (kind, base, abs(hash(path)))
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                del sys.modules[name]

    # What is here now is kept by every child: the garbage collector need not go through it.
    gc.collect()
    gc.freeze()


def _try_import(name):
    try:
        importlib.import_module(name)
    except Exception:
        pass


def _child(request):
    """In the forked child: run `ansible-playbook ARGS` with fd 1 and 2 on the request's files."""
    code = 250
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = list(request["args"])
        # A local temporary directory of the child's own, as a process of its own would make
        # (ansible.config.manager, type tmppath): the server's is removed by the atexit handler
        # every child inherits, which runs below.
        import tempfile
        from ansible import constants
        from ansible.utils.path import cleanup_tmp_file
        atexit.unregister(cleanup_tmp_file)
        constants.DEFAULT_LOCAL_TMP = tempfile.mkdtemp(prefix="ansible-local-%s" % os.getpid(),
                                                       dir=os.path.dirname(constants.DEFAULT_LOCAL_TMP))
        atexit.register(cleanup_tmp_file, constants.DEFAULT_LOCAL_TMP, warn=True)
        from ansible.cli.playbook import main
        try:
            main(list(request["args"]))
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        # As the interpreter would at exit: the atexit handlers, then the buffers. Then os._exit,
        # so that nothing else of the server's runs in the child.
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(req_fd, resp_fd):
    _warm_up()
    sys.stdout.flush()
    sys.stderr.flush()
    requests = os.fdopen(req_fd, "rb", buffering=0)
    buf = b""
    while True:
        chunk = requests.read(65536)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            pid = os.fork()
            if pid == 0:
                os.close(req_fd)
                os.close(resp_fd)
                _child(json.loads(line))
            _, status, usage = os.wait4(pid, 0)
            reply = {"rc": os.waitstatus_to_exitcode(status), "cpu": usage.ru_utime + usage.ru_stime}
            os.write(resp_fd, (json.dumps(reply) + "\n").encode())


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
