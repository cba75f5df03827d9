"""Guest code must run on Python 3.6+ with only what python3.11-minimal (+ json) ships."""

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT_DIR = os.path.join(REPO, "guest_agent")


def _sources():
    out = []
    for root, _, files in os.walk(AGENT_DIR):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".py") or root.endswith("bin"):
                out.append(path)
    return sorted(out)


def test_no_hostkv_init_in_namespace():
    assert not os.path.exists(os.path.join(AGENT_DIR, "hostkv", "__init__.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: os.path.relpath(p, REPO))
def test_parses_as_python36(path):
    with open(path) as f:
        src = f.read()
    tree = ast.parse(src, filename=path, feature_version=(3, 6))
    for node in ast.walk(tree):
        assert not isinstance(node, ast.NamedExpr), "walrus in %s" % path
        if isinstance(node, ast.ImportFrom):
            assert node.module not in ("__future__", "dataclasses"), "%s imports %s" % (path, node.module)
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
            assert "dataclasses" not in names and "asyncio" not in names, path
        if isinstance(node, ast.JoinedStr):
            for value in node.values:
                if isinstance(value, ast.FormattedValue):   # f"{x=}" leaves a Constant ending in '='
                    pass
        if isinstance(node, ast.Attribute) and node.attr in ("run",) and \
                isinstance(node.value, ast.Name) and node.value.id == "asyncio":
            raise AssertionError("asyncio.run in %s" % path)


def _minimal_home(tmp_path):
    """A PYTHONHOME holding only python3.11-minimal's stdlib files plus json/ (as the test guest)."""
    out = subprocess.run(["dpkg", "-L", "libpython3.11-minimal", "python3.11-minimal"],
                         stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    home = tmp_path / "home"
    prefix = "/usr/lib/python3.11/"
    for line in out.splitlines():
        if not line.startswith(prefix) or not os.path.isfile(line) or "__pycache__" in line:
            continue
        dest = home / "lib" / "python3.11" / line[len(prefix):]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            dest.symlink_to(line)
    json_dir = home / "lib" / "python3.11" / "json"
    json_dir.mkdir()
    for name in os.listdir("/usr/lib/python3.11/json"):
        if name.endswith(".py"):
            (json_dir / name).symlink_to("/usr/lib/python3.11/json/" + name)
    return str(home)


def test_runs_with_only_python3_minimal_stdlib(tmp_path):
    """Import everything and run the CLI/daemon help and error paths on a minimal stdlib."""
    code = r"""
import sys, json
import hostkv.agent, hostkv.agent.__main__, hostkv.agent.cli, hostkv.agent.daemon
from hostkv.agent import cli, config
codes = []
for argv in (["--help"], ["get", "--help"], ["watch", "--help"], ["bogus"], ["get", "bad key"],
             ["--run-dir", sys.argv[1], "status"], ["--run-dir", sys.argv[1], "get", "host.x"]):
    try:
        codes.append(cli.main(argv))
    except SystemExit as e:
        codes.append(e.code)
try:
    config.parse_args(["--help"])
except SystemExit as e:
    codes.append(e.code)
assert "shutil" not in sys.modules and "gettext" not in sys.modules
print(json.dumps(codes))
"""
    env = {"PYTHONHOME": _minimal_home(tmp_path), "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "protocol"), AGENT_DIR])}
    proc = subprocess.run(["/usr/bin/python3", "-S", "-c", code, str(tmp_path / "run")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, timeout=60,
                          universal_newlines=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [0, 0, 0, 2, 2, 3, 3, 0]
