"""Fast tests of the plugin's pieces without cobblerd (the real-cobblerd tests are beside these).

Options validation, the config file, the repo publisher (with the real createrepo_c) and the
installer with ``--root`` on a scratch tree.
"""

import json
import os
import shutil
import subprocess
import tokenize

import pytest

from hypothesis import given, settings, strategies as st

from tests.harness.cobbler_server import PYTHON, REPO

from cobbler_plugin.modules.hostkv._lib import config, options, publish  # noqa: E402
from hostkv.common import options as rules  # noqa: E402

INSTALLER = os.path.join(REPO, "cobbler_plugin", "hostkv_cobbler.py")


# ---------------------------------------------------------------- options (hostkv.common.options)

ENABLED_TABLE = ["1", "0", "true", "false", "yes", "no", "on", "off", "y", "n", "", "garbage",
                 "TRUE", " On ", "N", "2", "maybe"]


def _koan(value):
    """koan's verdict on hostkv_enabled=value as koan really gets it: Cobbler's own flattening."""
    from cobbler.utils import dict_to_string
    from hostkv_koan import meta
    flat = dict_to_string({"hostkv_enabled": value, "hostkv_vm_role": "web"})
    try:
        return meta.plan_from_meta(flat).enabled
    except meta.HostkvMetaError as err:
        return str(err)


def _validator(value):
    """The Cobbler plugin's verdict: its trigger's check (no problem, or the problem)."""
    problems = options.check_meta({"hostkv_enabled": value})
    return problems[0] if problems else None


def _snippet(value):
    """The real Cobbler Templar rendering the hostkv_agent snippet: installs, or its comment."""
    from tests.cobbler.cobbler_setup import render_snippet
    out = render_snippet({"hostkv_enabled": value})
    if "# hostkv-agent: begin" in out:
        return True
    comment = [line for line in out.splitlines() if line.startswith("# hostkv: ")]
    assert len(comment) == 1, out
    return comment[0]


@pytest.mark.parametrize("value", ENABLED_TABLE)
def test_enabled_words_agree(value):
    """The snippet, koan's extension and the Cobbler validator read hostkv_enabled the same way:
    all install/enable on a true word, none on a false word or empty, and all refuse garbage with
    the one message (hostkv.common.options.bool_problem)."""
    koan, validator, snippet = _koan(value), _validator(value), _snippet(value)
    word = value.strip().lower()
    if word in ("1", "true", "yes", "on", "y"):
        assert (koan, validator, snippet) == (True, None, True)
    elif word in ("0", "false", "no", "off", "n", ""):
        assert (koan, validator) == (False, None)
        assert snippet.startswith("# hostkv: hostkv_enabled is not 1/true/yes/on/y for this"), snippet
    else:
        message = rules.bool_problem("hostkv_enabled", value)
        assert "is not a boolean word" in message and repr(value) in message
        assert koan == message and validator == message
        assert snippet == "# hostkv: %s; hostkv-agent not installed" % message


def test_snippet_refuses_a_garbage_gpgcheck_instead_of_switching_it_off():
    from tests.cobbler.cobbler_setup import render_snippet
    out = render_snippet({"hostkv_enabled": "1", "hostkv_gpgcheck": "ture"})
    assert "# hostkv-agent: begin" not in out
    assert "# hostkv: %s; hostkv-agent not installed" % rules.bool_problem("hostkv_gpgcheck", "ture") in out
    assert options.check_meta({"hostkv_gpgcheck": "ture"}) == [rules.bool_problem("hostkv_gpgcheck", "ture")]
    assert "hostkv_gpgcheck=1" in render_snippet({"hostkv_enabled": "y", "hostkv_gpgcheck": "Yes"})


def test_check_meta_accepts_good_options_and_ignores_others():
    meta = {"hostkv_enabled": "yes", "hostkv_gpgcheck": "0", "hostkv_vm_rack": "r1",
            "hostkv_vm_a.b-c_d": "x" * 4096, "tree": "http://x", "other": None}
    assert options.check_meta(meta) == []
    assert options.vm_values(meta) == {"vm.rack": "r1", "vm.a.b-c_d": "x" * 4096}


def test_check_meta_names_every_problem():
    problems = options.check_meta({
        "hostkv_enabled": "maybe", "hostkv_vm_bad key": "1", "hostkv_vm_big": "é" * 2049,
        "hostkv_enable": "1", "hostkv_vm_dup": ["a", "b"], "hostkv_vm_none": None,
        "hostkv_vm_" + "k" * 130: "v", "hostkv_vm_ctl": "a\x01b"})
    text = "\n".join(problems)
    assert len(problems) == 8, text
    for needle in ("hostkv_enabled='maybe' is not a boolean word", "vm.bad key",
                   "value of vm.big is 4098 bytes", "hostkv_enable is not a hostkv option",
                   "hostkv_vm_dup is given 2 times", "hostkv_vm_none has no value",
                   "longer than 128 bytes", "value of vm.ctl has U+0001 (a control character) at character 2"):
        assert needle in text
    assert "hostkv_enable is not a hostkv option (known: hostkv_enabled," in text
    assert "hostkv_vm_NAME, hostkv_host_NAME)" in text
    # cobbler-web renders the message as HTML: a placeholder like <name> would vanish
    # (hostkv_vm_<name> showed as "hostkv_vm_)"); only the admin's own text may bring brackets
    assert "<" not in text and ">" not in text, text


@pytest.mark.parametrize("value", ["  padded", "tab\there", "two\nlines", "it's a value", "back\\slash",
                                   "q'uote", 'd"q', "trailing "])
def test_values_cobbler_would_alter_on_the_way_to_koan_are_refused(value):
    from cobbler.utils import dict_to_string
    from hostkv_koan import meta
    problems = options.check_meta({"hostkv_vm_motd": value})
    assert len(problems) == 1 and "Cobbler would hand this value to koan as" in problems[0], problems
    try:      # the evidence: what koan really reads differs
        seen = meta.parse_meta(dict_to_string({"hostkv_vm_motd": value})).get("hostkv_vm_motd")
    except meta.HostkvMetaError:
        seen = None
    assert seen != value


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_every_value_the_validator_accepts_reaches_koan_byte_for_byte(value):
    """Property: Cobbler's real flattening + koan's reading give back exactly what the validator
    accepted (and the validator's model of that transport agrees with the real one)."""
    from cobbler.utils import dict_to_string
    from hostkv_koan import meta
    try:
        real = meta.parse_meta(dict_to_string({"hostkv_vm_x": value})).get("hostkv_vm_x")
    except meta.HostkvMetaError:
        real = None
    else:
        real = "" if real is None else real
    assert rules.koan_view(value) == real
    if options.check_meta({"hostkv_vm_x": value}) == []:
        assert real == value


@pytest.mark.parametrize("url, ok", [
    ("http://10.0.0.1/pub/RPM-GPG-KEY", True), ("file:///etc/pki/rpm-gpg/KEY", True),
    ("https://h:8443/k?x=1", True), ("http://h/k'$(reboot)", False), ("/etc/key", False),
    ("http://h/a b", False), ("", False), ("http://h/k\n", False),
])
def test_gpgkey_must_be_a_plain_url(url, ok):
    assert (options.check_meta({"hostkv_gpgkey": url}) == []) is ok


def test_too_many_vm_keys():
    meta = dict(("hostkv_vm_k%d" % i, "v") for i in range(257))
    assert options.check_meta(meta) == ["257 hostkv_vm_* options, the limit is 256"]


# ---------------------------------------------------------------- config

def test_config_defaults_and_values(tmp_path):
    assert config.load(str(tmp_path / "missing.conf")) == config.DEFAULTS
    path = tmp_path / "c.conf"
    path.write_text("# comment\n\nrpm_dir = /srv/rpms\n  rpm_pattern=hostkv-*.rpm  \n")
    conf = config.load(str(path))
    assert conf["rpm_dir"] == "/srv/rpms" and conf["rpm_pattern"] == "hostkv-*.rpm"
    assert conf["createrepo"] == "createrepo_c"


@pytest.mark.parametrize("text, needle", [
    ("rpm_dir = /x\nrpmdir = /y\n", "c.conf:2: unknown key 'rpmdir'"),
    ("rpm_dir /x\n", "c.conf:1: expected 'key = value'"),
    ("# x\nrpm_dir =\n", "c.conf:2: rpm_dir has an empty value"),
])
def test_config_errors_name_the_line(tmp_path, text, needle):
    path = tmp_path / "c.conf"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        config.load(str(path))
    assert needle in str(err.value)


# ---------------------------------------------------------------- publish (real createrepo_c)

@pytest.fixture(scope="module")
def rpm_dir(tmp_path_factory):
    from tests.cobbler.cobbler_setup import make_rpms
    return os.path.dirname(str(make_rpms(str(tmp_path_factory.mktemp("udist"))).agent))


def test_publish_is_atomic_idempotent_and_cleans_up(rpm_dir, tmp_path):
    pub = str(tmp_path / "pub")
    rpms = publish.find_rpms(rpm_dir, "hostkv-agent-*.noarch.rpm")
    assert len(rpms) == 1 and not any(p.endswith(".src.rpm") for p in rpms)
    os.makedirs(pub)
    os.mkdir(os.path.join(pub, publish.TMP_PREFIX + "crashed"))   # leftover of an interrupted run
    repo, changed = publish.publish(rpms, pub)
    assert changed and os.path.islink(os.path.join(pub, "hostkv"))
    assert os.path.isfile(os.path.join(pub, "hostkv", "repodata", "repomd.xml"))
    assert sorted(os.listdir(pub)) == sorted(["hostkv", os.path.basename(repo)])
    mtime = os.stat(os.path.join(repo, "repodata", "repomd.xml")).st_mtime_ns
    assert publish.publish(rpms, pub) == (repo, False)
    assert os.stat(os.path.join(repo, "repodata", "repomd.xml")).st_mtime_ns == mtime

    # a second RPM: new repo beside, link swapped, old repo gone, old files carried one generation
    extra = tmp_path / "more"
    extra.mkdir()
    shutil.copy(rpms[0], str(extra / os.path.basename(rpms[0])))
    second = str(extra / os.path.basename(rpms[0]).replace("hostkv-agent", "hostkv-agent-copy"))
    shutil.copy(rpms[0], second)
    repo2, changed = publish.publish(sorted([str(extra / os.path.basename(rpms[0])), second]), pub)
    assert changed and repo2 != repo and not os.path.exists(repo)
    assert os.readlink(os.path.join(pub, "hostkv")) == os.path.basename(repo2)
    old_md = set(os.listdir(os.path.join(repo2, "repodata")))
    assert len(old_md) > 5   # own metadata + the previous generation's checksum-named files


def test_publish_failure_keeps_the_live_repo(rpm_dir, tmp_path):
    pub = str(tmp_path / "pub")
    rpms = publish.find_rpms(rpm_dir, "hostkv-agent-*.noarch.rpm")
    repo, _ = publish.publish(rpms, pub)
    bad = tmp_path / "bad.noarch.rpm"
    bad.write_bytes(b"garbage")
    with pytest.raises(publish.PublishError):
        publish.publish([str(bad)], pub, createrepo="/bin/false")
    assert os.readlink(os.path.join(pub, "hostkv")) == os.path.basename(repo)
    assert not any(n.startswith(publish.TMP_PREFIX) for n in os.listdir(pub))
    with pytest.raises(publish.PublishError):
        publish.publish([], pub)


# ---------------------------------------------------------------- installer with --root

SETTINGS = """# Cobbler settings (excerpt)
autoinstall_snippets_dir: /var/lib/cobbler/snippets
autoinstall_templates_dir: /var/lib/cobbler/templates
include: [ "/etc/cobbler/settings.d/*.settings" ]
"""


def run_installer(*args):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return subprocess.run([PYTHON, INSTALLER] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=60)


def tree(root):
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        out.add(os.path.relpath(dirpath, root))
        out.update(os.path.relpath(os.path.join(dirpath, n), root) for n in filenames)
    return out


def rules_version():
    from hostkv.common import version
    return version.VERSION


def test_installer_root_install_status_uninstall(tmp_path):
    root = tmp_path / "root"
    (root / "etc/cobbler/settings.d").mkdir(parents=True)
    (root / "etc/cobbler/settings.yaml").write_text(SETTINGS)
    # an include overrides the snippets dir, as Cobbler's own settings.d files may
    (root / "etc/cobbler/settings.d/zz.settings").write_text(
        "autoinstall_snippets_dir: /srv/snippets\n")
    (root / "var/lib/cobbler/templates").mkdir(parents=True)
    (root / "var/lib/cobbler/templates/sample.ks").write_text("# Cobbler's own\n")
    cobbler_dir = "/opt/cobbler-site/cobbler"
    (root / cobbler_dir.lstrip("/") / "modules").mkdir(parents=True)
    before = tree(str(root))
    args = ["--root", str(root), "--cobbler-dir", cobbler_dir]

    assert run_installer("status", *args).returncode == 3
    proc = run_installer("status", "--json", *args)
    assert proc.returncode == 3 and json.loads(proc.stdout)["installed"] is False
    first = run_installer("install", *args)
    assert first.returncode == 0, first.stderr
    assert "restart cobblerd" in first.stdout
    assert (root / "srv/snippets/hostkv_agent").is_file()
    assert (root / "var/lib/cobbler/templates/sample_hostkv.ks").is_file()
    modules = root / cobbler_dir.lstrip("/") / "modules" / "hostkv"
    assert (modules / "sync_post_publish.py").is_file() and (modules / "_lib/common/options.py").is_file()
    assert not (modules / "_lib/protocol.py").exists()         # the validators need only the shared rules
    manifest = json.loads((root / "var/lib/hostkv-cobbler/manifest.json").read_text())
    assert "/srv/snippets/hostkv_agent" in manifest["files"]          # paths without --root
    assert all(not p.startswith(str(root)) for p in manifest["files"])

    again = run_installer("install", *args)
    assert "(0 written, 0 removed)" in again.stdout
    assert run_installer("status", *args).returncode == 0

    # status --json (issue 12.4): the same states and exit codes, as one object
    proc = run_installer("status", "--json", *args)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["installed"] is True and report["intact"] is True
    assert report["version"] == rules_version()
    states = {f["path"]: (f["state"], f["rpmnew"]) for f in report["files"]}
    assert states["/srv/snippets/hostkv_agent"] == ("ok", None)
    assert set(states) == set(manifest["files"])
    snippet = root / "srv/snippets/hostkv_agent"
    kept = snippet.read_bytes()
    snippet.write_text("edited\n")
    proc = run_installer("status", "--json", *args)
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["intact"] is False
    assert [f["path"] for f in report["files"] if f["state"] != "ok"] == ["/srv/snippets/hostkv_agent"]
    snippet.write_bytes(kept)
    assert run_installer("install", "--json", *args).returncode == 2      # --json goes with status

    (modules / "__pycache__").mkdir()                      # what cobblerd's import leaves
    (modules / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"")
    gone = run_installer("uninstall", *args)
    assert gone.returncode == 0, gone.stderr
    assert tree(str(root)) == before
    assert run_installer("uninstall", *args).returncode == 0     # idempotent


def _installed_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc/cobbler").mkdir(parents=True)
    (root / "etc/cobbler/settings.yaml").write_text(SETTINGS)
    cobbler_dir = "/opt/cobbler-site/cobbler"
    (root / cobbler_dir.lstrip("/") / "modules").mkdir(parents=True)
    args = ["--root", str(root), "--cobbler-dir", cobbler_dir]
    assert run_installer("install", *args).returncode == 0
    return root, args, root / cobbler_dir.lstrip("/") / "modules" / "hostkv"


def _new_release(tmp_path, snippet_line):
    """A copy of the plugin's sources (as a newer package would ship them) whose snippet gained
    ``snippet_line``; returns the copy's installer."""
    src = tmp_path / "newsrc"
    shutil.copytree(os.path.join(REPO, "cobbler_plugin"), str(src / "cobbler_plugin"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(REPO, "kickstart_snippets"), str(src / "kickstart_snippets"))
    shutil.copytree(os.path.join(REPO, "protocol"), str(src / "protocol"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(str(src / "kickstart_snippets/hostkv_agent"), "a") as f:
        f.write(snippet_line)
    return str(src / "cobbler_plugin" / "hostkv_cobbler.py")


def test_installer_never_loses_an_admins_edit(tmp_path):
    """What %posttrans does on every upgrade (install again) keeps an edited snippet and writes
    the new one beside it as .rpmnew, saying so; an edited module is replaced and kept as
    .rpmsave; once the admin merged, the next install takes over and drops the .rpmnew."""
    root, args, modules = _installed_root(tmp_path)
    snippet = root / "var/lib/cobbler/snippets/hostkv_agent"
    edit = snippet.read_text() + "## the admin's local change\n"
    snippet.write_text(edit)
    (modules / "__init__.py").write_text((modules / "__init__.py").read_text() + "# admin\n")
    module_edit = (modules / "__init__.py").read_text()

    newer = _new_release(tmp_path, "## shipped in the next release\n")
    proc = subprocess.run([PYTHON, newer, "install"] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rpmnew = root / "var/lib/cobbler/snippets/hostkv_agent.rpmnew"
    assert snippet.read_text() == edit                                          # theirs, untouched
    assert rpmnew.read_text().endswith("## shipped in the next release\n")     # ours, beside it
    assert ("kept your edited /var/lib/cobbler/snippets/hostkv_agent; the new version is "
            "/var/lib/cobbler/snippets/hostkv_agent.rpmnew") in proc.stdout, proc.stdout
    assert (modules / "__init__.py.rpmsave").read_text() == module_edit
    assert (modules / "__init__.py").read_text() == open(os.path.join(
        REPO, "cobbler_plugin/modules/hostkv/__init__.py")).read()
    assert "saved it as" in proc.stdout and "__init__.py.rpmsave" in proc.stdout
    status = run_installer("status", *args)
    assert status.returncode == 1
    assert ("modified /var/lib/cobbler/snippets/hostkv_agent (kept; the new version is "
            "/var/lib/cobbler/snippets/hostkv_agent.rpmnew)") in status.stdout, status.stdout

    # again (the next upgrade): still theirs, nothing rewritten
    again = subprocess.run([PYTHON, newer, "install"] + args, stdout=subprocess.PIPE,
                           universal_newlines=True, timeout=60)
    assert snippet.read_text() == edit and "(0 written, 0 removed)" in again.stdout, again.stdout

    # the admin takes the new version: hostkv owns the file again, the .rpmnew goes
    shutil.copyfile(str(rpmnew), str(snippet))
    merged = subprocess.run([PYTHON, newer, "install"] + args, stdout=subprocess.PIPE,
                            universal_newlines=True, timeout=60)
    assert not rpmnew.exists() and "removed /var/lib/cobbler/snippets/hostkv_agent.rpmnew" in merged.stdout
    assert subprocess.run([PYTHON, newer, "status"] + args, stdout=subprocess.PIPE,
                          timeout=60).returncode == 0

    # uninstall keeps an edit as .rpmsave (and says so), removes the rest
    snippet.write_text(edit)
    gone = run_installer("uninstall", *args)
    assert gone.returncode == 0 and "kept your edited /var/lib/cobbler/snippets/hostkv_agent as " \
        "/var/lib/cobbler/snippets/hostkv_agent.rpmsave" in gone.stdout, gone.stdout
    assert (root / "var/lib/cobbler/snippets/hostkv_agent.rpmsave").read_text() == edit
    assert not snippet.exists() and not (modules / "sync_post_publish.py").exists()


def test_installer_keeps_a_snippet_that_was_there_before(tmp_path):
    """A hostkv_agent the admin had before hostkv's first install is theirs: kept, ours beside
    it; uninstall leaves it in place."""
    root = tmp_path / "root"
    (root / "etc/cobbler").mkdir(parents=True)
    (root / "etc/cobbler/settings.yaml").write_text(SETTINGS)
    (root / "var/lib/cobbler/snippets").mkdir(parents=True)
    mine = root / "var/lib/cobbler/snippets/hostkv_agent"
    mine.write_text("# my own hostkv_agent\n")
    (root / "opt/c/cobbler/modules").mkdir(parents=True)
    args = ["--root", str(root), "--cobbler-dir", "/opt/c/cobbler"]
    proc = run_installer("install", *args)
    assert proc.returncode == 0 and "kept your edited /var/lib/cobbler/snippets/hostkv_agent" in proc.stdout
    assert mine.read_text() == "# my own hostkv_agent\n"
    assert (root / "var/lib/cobbler/snippets/hostkv_agent.rpmnew").is_file()
    gone = run_installer("uninstall", *args)
    assert "left /var/lib/cobbler/snippets/hostkv_agent in place" in gone.stdout, gone.stdout
    assert mine.read_text() == "# my own hostkv_agent\n"
    assert not (root / "var/lib/cobbler/snippets/hostkv_agent.rpmnew").exists()


def test_installer_errors_are_clear(tmp_path):
    proc = run_installer("install", "--root", str(tmp_path))
    assert proc.returncode == 1
    assert "cannot read Cobbler's settings %s/etc/cobbler/settings.yaml" % tmp_path in proc.stderr
    (tmp_path / "s.yaml").write_text("autoinstall_snippets_dir: relative/dir\n")
    proc = run_installer("install", "--settings", str(tmp_path / "s.yaml"), "--root", str(tmp_path))
    assert proc.returncode == 1 and "no absolute autoinstall_snippets_dir" in proc.stderr


def test_plugin_code_is_python36_compatible():
    """The modules run inside cobblerd (Cobbler 3.3 supports Python 3.6): no f-strings, no walrus."""
    src = os.path.join(REPO, "cobbler_plugin")
    for dirpath, _, names in os.walk(src):
        for name in names:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                for tok in tokenize.tokenize(f.readline):
                    if tok.type == tokenize.STRING:
                        prefix = tok.string[:tok.string.index(tok.string[-1])].lower()
                        assert "f" not in prefix, "%s:%d f-string" % (name, tok.start[0])
                    assert tok.string != ":=", "%s:%d walrus" % (name, tok.start[0])
                    assert getattr(tokenize, "FSTRING_START", None) != tok.type


@pytest.mark.parametrize("style", ["direct", "env"])
def test_wrapper_runs_with_the_python_of_the_cobbler_command(tmp_path, style):
    """bin/hostkv-cobbler picks the interpreter from the shebang of `cobbler` on PATH; without
    --cobbler-dir the install only works with a Python that can import cobbler (the venv's)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    path = "%s:/usr/bin:/bin" % bindir
    if style == "direct":
        shebang = "#!%s\n" % PYTHON
    else:   # e.g. an activated venv: `env python3` finds the venv's python first on PATH
        shebang = "#!/usr/bin/env python3\n"
        path = "%s:%s:/usr/bin:/bin" % (bindir, os.path.dirname(PYTHON))
    (bindir / "cobbler").write_text(shebang + "print('not used')\n")
    (bindir / "cobbler").chmod(0o755)
    root = tmp_path / "root"
    (root / "etc/cobbler").mkdir(parents=True)
    (root / "etc/cobbler/settings.yaml").write_text(SETTINGS)
    env = dict(os.environ, PATH=path)
    env.pop("PYTHONPATH", None)
    env.pop("HOSTKV_COBBLER_PYTHON", None)
    proc = subprocess.run(["sh", os.path.join(REPO, "cobbler_plugin", "bin", "hostkv-cobbler"),
                           "install", "--root", str(root)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    import cobbler
    assert (root / os.path.dirname(cobbler.__file__).lstrip("/") / "modules/hostkv").is_dir()
