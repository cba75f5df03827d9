"""An isolated, real koan 3.0.1 install for tests: its own venv, so installing hostkv-koan there
never touches the project's .venv (which other tests and engineers share).

    env = KoanEnv.create(tmpdir)      # /usr/bin/python3 -m venv --without-pip, then koan copied in
    env.python, env.koan, env.site    # interpreter, the koan script, its site-packages
    env.hostkv_koan(["status", "--json"])   # koan_patch/bin/hostkv-koan under env.python
    env.manifest()                    # {relative path: sha256} of site-packages (no __pycache__)

koan's files (koan/ and its metadata) are copied byte for byte from the project venv, where
scripts/setup.sh installed them with pip; its dependencies (libvirt-python, netifaces, ...) come
from the project venv through one path-only .pth file.  bin/koan is pip's koan script with the
shebang pointing at this venv.

koan's metadata comes in two layouts, both real: ``koan-3.0.1.dist-info/METADATA`` (pip from a
wheel; what scripts/setup.sh makes) and ``koan-3.0.1.egg-info`` (EL's python3-koan RPM, and pip's
legacy ``setup.py install``): a directory with PKG-INFO, or a single PKG-INFO-format file.
hostkv-koan reads all three.  ``KoanEnv.create(root, layout=...)`` lays out the one asked for
(``None``: as in the project venv), converting the project venv's metadata if needed;
``env.metadata_file()`` is the file holding ``Version:``.
"""

import glob
import hashlib
import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(REPO, ".venv")
HOSTKV_KOAN = os.path.join(REPO, "koan_patch", "bin", "hostkv-koan")


LAYOUTS = ("dist-info", "egg-info", "egg-info-file")


def _project_site():
    found = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "koan"))
    if not found:
        raise AssertionError("koan is not installed in %s: run scripts/setup.sh" % VENV)
    return os.path.dirname(found[0])


def koan_metadata(site):
    """(layout, path of koan's metadata entry) in ``site``; exactly one must exist."""
    found = [("dist-info", p) for p in glob.glob(os.path.join(site, "koan-*.dist-info"))]
    for p in glob.glob(os.path.join(site, "koan-*.egg-info")):
        found.append(("egg-info" if os.path.isdir(p) else "egg-info-file", p))
    if len(found) != 1:
        raise AssertionError("expected one koan dist-info or egg-info in %s, found %r" % (site, found))
    return found[0]


def _metadata_text(layout, path):
    name = {"dist-info": "METADATA", "egg-info": "PKG-INFO", "egg-info-file": None}[layout]
    with open(os.path.join(path, name) if name else path) as f:
        return f.read()


def _copy_metadata(src_site, dst_site, layout):
    """koan's metadata from ``src_site`` into ``dst_site`` in ``layout`` (byte copy if the same)."""
    src_layout, src = koan_metadata(src_site)
    if layout in (None, src_layout):
        copy = shutil.copytree if os.path.isdir(src) else shutil.copy2
        copy(src, os.path.join(dst_site, os.path.basename(src)))
        return
    stem = os.path.basename(src).rsplit(".", 1)[0]          # koan-3.0.1
    text = _metadata_text(src_layout, src)
    if layout == "dist-info":
        path = os.path.join(dst_site, stem + ".dist-info")
        os.makedirs(path)
        with open(os.path.join(path, "METADATA"), "w") as f:
            f.write(text)
        with open(os.path.join(path, "top_level.txt"), "w") as f:
            f.write("koan\n")
        return
    if "-py" not in stem:                                   # egg-info names carry the Python version
        stem = "%s-py%d.%d" % ((stem,) + tuple(__import__("sys").version_info[:2]))
    path = os.path.join(dst_site, stem + ".egg-info")
    if layout == "egg-info-file":
        with open(path, "w") as f:
            f.write(text)
        return
    os.makedirs(path)
    with open(os.path.join(path, "PKG-INFO"), "w") as f:
        f.write(text)
    with open(os.path.join(path, "top_level.txt"), "w") as f:
        f.write("koan\n")


class KoanEnv(object):
    def __init__(self, root):
        self.root = root
        self.python = os.path.join(root, "bin", "python")
        self.koan = os.path.join(root, "bin", "koan")
        self.site = glob.glob(os.path.join(root, "lib", "python3*", "site-packages"))[0]

    @classmethod
    def create(cls, root, layout=None):
        if layout not in (None,) + LAYOUTS:
            raise ValueError("layout must be one of %r" % (LAYOUTS,))
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", root], check=True,
                       timeout=120)
        env = cls(root)
        src = _project_site()
        shutil.copytree(os.path.join(src, "koan"), os.path.join(env.site, "koan"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        _copy_metadata(src, env.site, layout)
        with open(os.path.join(env.site, "zz_project_venv.pth"), "w") as f:
            f.write(src + "\n")
        with open(os.path.join(VENV, "bin", "koan")) as f:
            script = f.read().split("\n", 1)[1]
        with open(env.koan, "w") as f:
            f.write("#!%s\n%s" % (env.python, script))
        os.chmod(env.koan, 0o755)
        return env

    @property
    def layout(self):
        return koan_metadata(self.site)[0]

    def metadata_file(self):
        """The file with koan's ``Version:`` line (METADATA, PKG-INFO or the egg-info file)."""
        layout, path = koan_metadata(self.site)
        return {"dist-info": os.path.join(path, "METADATA"), "egg-info": os.path.join(path, "PKG-INFO"),
                "egg-info-file": path}[layout]

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
