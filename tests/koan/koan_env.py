"""An isolated, real koan 3.0.1 install for tests: its own venv, so installing hostkv-koan there
never touches the project's .venv (which other tests and engineers share).

    env = KoanEnv.create(tmpdir)      # /usr/bin/python3 -m venv --without-pip, then koan copied in
    env.python, env.koan, env.site    # interpreter, the koan script, its site-packages
    env.hostkv_koan(["status", "--json"])   # koan_patch/bin/hostkv-koan under env.python
    env.manifest()                    # {relative path: sha256} of site-packages (no __pycache__)

koan's files (koan/ and koan-3.0.1.dist-info/) are copied byte for byte from the project venv,
where scripts/setup.sh installed them with pip; its dependencies (libvirt-python, netifaces, ...)
come from the project venv through one path-only .pth file.  bin/koan is pip's koan script with
the shebang pointing at this venv.
"""

import glob
import hashlib
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(REPO, ".venv")
HOSTKV_KOAN = os.path.join(REPO, "koan_patch", "bin", "hostkv-koan")


def _project_site():
    found = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "koan"))
    if not found:
        raise AssertionError("koan is not installed in %s: run scripts/setup.sh" % VENV)
    return os.path.dirname(found[0])


class KoanEnv(object):
    def __init__(self, root):
        self.root = root
        self.python = os.path.join(root, "bin", "python")
        self.koan = os.path.join(root, "bin", "koan")
        self.site = glob.glob(os.path.join(root, "lib", "python3*", "site-packages"))[0]

    @classmethod
    def create(cls, root):
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", root], check=True,
                       timeout=120)
        env = cls(root)
        src = _project_site()
        shutil.copytree(os.path.join(src, "koan"), os.path.join(env.site, "koan"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        dist = glob.glob(os.path.join(src, "koan-*.dist-info"))
        if len(dist) != 1:
            raise AssertionError("expected one koan dist-info in %s, found %r" % (src, dist))
        shutil.copytree(dist[0], os.path.join(env.site, os.path.basename(dist[0])))
        with open(os.path.join(env.site, "zz_project_venv.pth"), "w") as f:
            f.write(src + "\n")
        with open(os.path.join(VENV, "bin", "koan")) as f:
            script = f.read().split("\n", 1)[1]
        with open(env.koan, "w") as f:
            f.write("#!%s\n%s" % (env.python, script))
        os.chmod(env.koan, 0o755)
        return env

    def clean_env(self, **extra):
        """os.environ without PYTHONPATH (koan must find hostkv only through the .pth)."""
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        env.pop("HOSTKV_KOAN_DISABLE", None)
        env.update(extra)
        return env

    def hostkv_koan(self, args, timeout=120, **extra_env):
        return subprocess.run([self.python, HOSTKV_KOAN] + list(args), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                              env=self.clean_env(**extra_env), cwd="/")

    def manifest(self):
        """{path relative to site-packages: sha256 of content (or 'symlink:target')}."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.site):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self.site)
                if os.path.islink(path):
                    out[rel] = "symlink:" + os.readlink(path)
                else:
                    with open(path, "rb") as f:
                        out[rel] = hashlib.sha256(f.read()).hexdigest()
        return out
