"""One version (hostkv.common.version, tied to VERSION) and one set of default names (paths),
reported and used by every component."""
import ast
import os
import subprocess
import sys

import pytest

from hostkv import protocol
from hostkv.common import paths, version

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_version_is_the_version_file():
    with open(os.path.join(REPO, "VERSION")) as f:
        assert version.VERSION == f.read().strip()


@pytest.mark.parametrize("argv, prefix", [
    (["-m", "hostkv.hostkvd", "--version"], "hostkvd "),
    ([os.path.join(REPO, "guest_agent", "bin", "hostkv"), "--version"], "hostkv "),
    ([os.path.join(REPO, "guest_agent", "bin", "hostkv-agent"), "--version"], "hostkv-agent "),
    ([os.path.join(REPO, "koan_patch", "bin", "hostkv-koan"), "--version"], "hostkv-koan "),
])
def test_every_component_reports_that_version(argv, prefix):
    out = subprocess.run([sys.executable] + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == prefix + version.VERSION, out.stdout


def test_components_default_to_the_shared_names():
    from hostkv.agent import config as agent_config
    from hostkv.hostkvctl import control_client
    from hostkv.hostkvd import config as hostkvd_config, control
    assert protocol.DEFAULT_PORT_NAME == paths.PORT_NAME == "org.hostkv.0"
    assert control.DEFAULT_PATH == control_client.DEFAULT_PATH == paths.HOSTKVD_CONTROL_SOCKET
    assert hostkvd_config.DEFAULT_PATH == paths.HOSTKVD_CONFIG
    cfg = agent_config.Config()
    assert (cfg.port_name, cfg.run_dir, cfg.state_dir, cfg.hooks_dir, cfg.socket) == (
        paths.PORT_NAME, paths.AGENT_RUN_DIR, paths.AGENT_STATE_DIR, paths.AGENT_HOOKS_DIR, paths.AGENT_SOCKET)


def _shipped_python(top):
    for dirpath, _dirs, names in os.walk(top):
        for name in names:
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


@pytest.mark.parametrize("path", sorted(_shipped_python(os.path.join(REPO, "protocol"))),
                         ids=lambda p: os.path.relpath(p, REPO))
def test_shared_code_is_python36_stdlib_only(path):
    """protocol/ ships to EL8 guests and into cobblerd: Python 3.6 syntax, standard library only."""
    import sysconfig
    stdlib = set(sys.builtin_module_names) | {
        n.split(".")[0] for n in os.listdir(sysconfig.get_paths()["stdlib"])} | {"xml"}
    with open(path) as f:
        tree = ast.parse(f.read(), path, feature_version=(3, 6))
    for node in ast.walk(tree):
        assert not isinstance(node, (ast.NamedExpr, ast.JoinedStr)), "%s:%d" % (path, node.lineno)
        if isinstance(node, ast.Import):
            for alias in node.names:
                assert alias.name.split(".")[0] in stdlib, (path, alias.name)
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            top = node.module.split(".")[0]
            assert top in stdlib or node.module.startswith("hostkv.common"), (path, node.module)
