"""`hostkv-koan install|uninstall|status` on a real koan 3.0.1 install (its own venv per test).

Idempotent, exactly reversible (site-packages byte-compared before install and after uninstall,
koan's files byte-compared with pip's), inert for processes that never import koan, refusing an
unknown koan version unless --force.  `status` imports koan in a fresh interpreter (which runs
virt-install --version), so what it reports as wrapped is what koan gets.
"""

import json
import os
import subprocess

import pytest

from tests.koan.koan_env import LAYOUTS, KoanEnv, _project_site

WRAPPED = {
    "koan.app.Koan.get_data", "koan.app.Koan.get_install_tree_from_autoinst",
    "koan.app.Koan.calc_virt_filesize2", "koan.app.Koan.virt_net_install",
    "koan.virtinstall._sanitize_nics", "koan.virtinstall.build_commandline",
    "koan.qcreate.start_install",
}


@pytest.fixture
def env(tmp_path):
    return KoanEnv.create(str(tmp_path / "venv"))


@pytest.fixture(params=LAYOUTS)
def any_env(request, tmp_path):
    """koan with each metadata layout found in the wild (pip wheel, EL RPM / legacy pip)."""
    env = KoanEnv.create(str(tmp_path / "venv"), layout=request.param)
    assert env.layout == request.param
    return env


def _status(env, **extra_env):
    res = env.hostkv_koan(["status", "--json"], **extra_env)
    return res.returncode, json.loads(res.stdout)


def _pth(env):
    return os.path.join(env.site, "hostkv_koan.pth")


def test_install_status_uninstall_idempotent_and_exact(any_env):
    env = any_env
    pristine = env.manifest()
    rc, st = _status(env)
    assert rc == 3 and st["installed"] is False
    assert st["koan_version"] == "3.0.1" and st["supported"] is True

    first = env.hostkv_koan(["install"])
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("installed ")
    stat1 = os.stat(_pth(env))
    again = env.hostkv_koan(["install"])
    assert again.returncode == 0 and again.stdout.startswith("already installed"), again
    assert os.stat(_pth(env)).st_mtime_ns == stat1.st_mtime_ns       # nothing rewritten

    # exactly one file was added, nothing of koan changed
    installed = env.manifest()
    assert set(installed) - set(pristine) == {"hostkv_koan.pth"}
    assert {k: v for k, v in installed.items() if k != "hostkv_koan.pth"} == pristine

    rc, st = _status(env)
    assert rc == 0, st
    assert st["installed"] and st["active"]
    assert st["wrapped"] == {name: "wrapped" for name in WRAPPED}

    gone = env.hostkv_koan(["uninstall"])
    assert gone.returncode == 0 and gone.stdout.startswith("removed "), gone
    again = env.hostkv_koan(["uninstall"])
    assert again.returncode == 0 and again.stdout.startswith("not installed"), again
    assert env.manifest() == pristine
    assert not [f for f in os.listdir(env.site) if "hostkv" in f]
    # koan's own files are byte-identical to what pip installed in the project venv
    src = os.path.join(_project_site(), "koan")
    for name in sorted(os.listdir(src)):
        if name.endswith(".py"):
            with open(os.path.join(src, name), "rb") as a, \
                    open(os.path.join(env.site, "koan", name), "rb") as b:
                assert a.read() == b.read(), name
    rc, st = _status(env)
    assert rc == 3 and not st["installed"]


def test_hook_is_inert_without_koan_and_wraps_on_import(env):
    assert env.hostkv_koan(["install"]).returncode == 0
    probe = ("import sys, json; before = sorted(m for m in sys.modules if m.startswith(('koan', 'hostkv')));"
             "paths = [p for p in sys.path if 'protocol' in p or 'host_service' in p];"
             "import koan.app, koan.virtinstall;"
             "print(json.dumps([before, paths, getattr(koan.app.Koan.get_data, '__hostkv_koan__', False),"
             " [p for p in sys.path if 'protocol' in p or 'host_service' in p]]))")
    res = subprocess.run([env.python, "-c", probe], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, env=env.clean_env(), timeout=120, cwd="/")
    assert res.returncode == 0, res.stderr
    before, paths_before, wrapped, paths_after = json.loads(res.stdout.strip().splitlines()[-1])
    assert before == ["hostkv_koan", "hostkv_koan.hook"]      # only the tiny hook is loaded...
    assert paths_before == []                                 # ...and hostkv's code is not on the path
    assert wrapped is True
    assert len(paths_after) == 2                              # until koan is imported


def test_disable_env_leaves_pieces_stock(env):
    assert env.hostkv_koan(["install"]).returncode == 0
    rc, st = _status(env, HOSTKV_KOAN_DISABLE="bridge,hostkv")
    assert rc == 0, st
    assert st["wrapped"]["koan.virtinstall._sanitize_nics"] == "not wrapped"
    assert st["wrapped"]["koan.virtinstall.build_commandline"] == "not wrapped"
    assert st["wrapped"]["koan.app.Koan.get_data"] == "wrapped"


def test_unknown_koan_version_refused_unless_forced(any_env):
    env = any_env
    meta = env.metadata_file()
    with open(meta) as f:
        text = f.read()
    with open(meta, "w") as f:
        f.write(text.replace("Version: 3.0.1", "Version: 3.0.2", 1))
    pristine = env.manifest()

    res = env.hostkv_koan(["install"])
    assert res.returncode == 1
    assert "koan 3.0.2" in res.stderr and "--force" in res.stderr, res.stderr
    assert env.manifest() == pristine

    res = env.hostkv_koan(["install", "--force"])
    assert res.returncode == 0, res.stderr
    rc, st = _status(env)
    assert rc == 0 and st["supported"] is False and st["koan_version"] == "3.0.2"
    assert set(st["wrapped"].values()) == {"wrapped"}
    assert env.hostkv_koan(["uninstall"]).returncode == 0
    assert env.manifest() == pristine


def test_koan_upgraded_to_unknown_version_after_install_runs_stock(any_env):
    env = any_env
    assert env.hostkv_koan(["install"]).returncode == 0
    meta = env.metadata_file()
    with open(meta) as f:
        text = f.read()
    with open(meta, "w") as f:
        f.write(text.replace("Version: 3.0.1", "Version: 3.1.0", 1))
    res = env.hostkv_koan(["status", "--json"])
    st = json.loads(res.stdout)
    assert res.returncode == 1 and st["installed"] and not st["supported"]
    assert set(st["wrapped"].values()) == {"not wrapped"}


def test_python_option_acts_on_that_interpreter(env):
    """Run with the project's interpreter, act on the test venv's koan via --python."""
    import sys
    from tests.koan.koan_env import HOSTKV_KOAN
    res = subprocess.run([sys.executable, HOSTKV_KOAN, "--python", env.python, "install"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         env=env.clean_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert os.path.exists(_pth(env))
    assert env.site in res.stdout


def test_refuses_code_others_can_change(env, tmp_path):
    """The .pth makes every program of that Python import hostkv-koan's code: refuse to point it
    at a directory anybody can write to."""
    import shutil
    from tests.koan.koan_env import REPO
    unsafe = tmp_path / "shared"
    unsafe.mkdir()
    os.chmod(str(unsafe), 0o777)
    shutil.copytree(os.path.join(REPO, "koan_patch"), str(unsafe / "koan_patch"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    pristine = env.manifest()
    res = subprocess.run([env.python, str(unsafe / "koan_patch" / "bin" / "hostkv-koan"), "install",
                          "--lib", os.path.join(REPO, "protocol"),
                          "--lib", os.path.join(REPO, "host_service")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         env=env.clean_env(), timeout=60)
    assert res.returncode == 1, res
    assert "refusing" in res.stderr and "%s: writable by everyone" % unsafe in res.stderr
    assert env.manifest() == pristine
