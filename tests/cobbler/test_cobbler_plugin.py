"""hostkv's Cobbler plugin against a real cobblerd 3.3.10 (tests/harness/cobbler_server.py).

The plugin is installed with the real installer (``cobbler_plugin/bin/hostkv-cobbler install``)
into the namespace's Cobbler, cobblerd is restarted, and everything is driven through the real
``cobbler`` CLI, XML-RPC and HTTP; the published repo is consumed by Debian's real dnf and rpm.
The last test uninstalls and checks that exactly what the install added is gone.
"""

import glob
import os
import re
import subprocess
import threading
import urllib.request
import xml.etree.ElementTree as ET
import xmlrpc.client

import pytest

from tests.cobbler import post_sandbox
from tests.cobbler.cobbler_setup import DISTRO, installer, make_rpms, snapshot
from tests.harness.cobbler_server import REPO, VENV

pytestmark = pytest.mark.cobbler

KSVALIDATOR = os.path.join(VENV, "bin", "ksvalidator")
REPO_NS = "{http://linux.duke.edu/metadata/repo}"


# ---------------------------------------------------------------- helpers

def fetch(url):
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200, url
        return resp.read()


def repo_url(server):
    return server.url + "/cobbler/pub/hostkv/"


def dnf_repoquery(server, tmp_path, *extra):
    proc = subprocess.run(
        ["dnf", "-q", "repoquery", "--installroot=%s" % (tmp_path / "dnfroot"), "--releasever=9",
         "--setopt=reposdir=/nonexistent", "--setopt=cachedir=%s" % (tmp_path / "dnfcache"),
         "--repofrompath=hostkv,%s" % repo_url(server), "--repo=hostkv",
         "--setopt=hostkv.gpgcheck=0"] + list(extra) + ["hostkv-agent"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


def render(server, kind, name):
    return server.cli([kind, "get-autoinstall", "--name=" + name]).stdout


def post_section(ks):
    """The chroot %post section's body (Cobbler's sample templates have exactly one)."""
    match = re.search(r"^%post\s*\n(.*?)^%end", ks, re.S | re.M)
    assert match, "no %post section in:\n" + ks
    return match.group(1)


def hostkv_block(ks):
    match = re.search(r"^# hostkv-agent: begin.*?^# hostkv-agent: end\n", ks, re.S | re.M)
    return match.group(0) if match else None


def ksvalidate(ks, tmp_path, name):
    path = tmp_path / (name + ".ks")
    path.write_text(ks)
    proc = subprocess.run([KSVALIDATOR, "-v", "RHEL9", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    assert proc.returncode == 0, "ksvalidator: %s\n%s" % (proc.stdout, ks)


def bash_n(script):
    proc = subprocess.run(["bash", "-n"], input=script, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=30)
    assert proc.returncode == 0, "bash -n: %s\n%s" % (proc.stdout, script)


def ensure(server, kind, name, *args):
    """Add a profile/system once (the session server outlives this module's fixtures)."""
    if name not in server.xmlrpc.get_item_names(kind):
        server.cli([kind, "add", "--name=" + name] + list(args))


@pytest.fixture(scope="module")
def objects(hostkv_cobbler):
    s = hostkv_cobbler
    ensure(s, "profile", "hk-on", "--distro=" + DISTRO, "--autoinstall=sample_hostkv.ks",
           "--autoinstall-meta=hostkv_enabled=1")
    ensure(s, "profile", "hk-off", "--distro=" + DISTRO, "--autoinstall=sample_hostkv.ks")
    ensure(s, "system", "hk-sys-on", "--profile=hk-off",
           "--autoinstall-meta=hostkv_enabled=Yes hostkv_vm_rack=r12 hostkv_gpgcheck=0")
    ensure(s, "system", "hk-sys-off", "--profile=hk-on", "--autoinstall-meta=hostkv_enabled=OFF")
    ensure(s, "profile", "hk-y", "--distro=" + DISTRO, "--autoinstall=sample_hostkv.ks",
           "--autoinstall-meta=hostkv_enabled=y")
    return s


# ---------------------------------------------------------------- install + publish

def test_install_places_modules_and_snippets(hostkv_cobbler):
    s = hostkv_cobbler
    assert "restart cobblerd" in s.install_output
    modules = os.path.join(s.package_dir, "modules", "hostkv")
    for rel in ("sync_post_publish.py", "add_profile_pre_validate.py", "add_distro_pre_validate.py",
                "add_system_pre_validate.py", "_lib/options.py", "_lib/publish.py"):
        assert os.path.isfile(s.path(os.path.join(modules, rel))), rel
    common = os.path.join(REPO, "protocol", "hostkv", "common")
    for name in sorted(n for n in os.listdir(common) if n.endswith(".py")):
        with open(s.path(os.path.join(modules, "_lib", "common", name)), "rb") as f:
            shipped = f.read()
        with open(os.path.join(common, name), "rb") as f:
            assert shipped == f.read(), name
    assert not os.path.exists(s.path(os.path.join(modules, "_lib", "protocol.py")))
    # cobblerd (no PYTHONPATH, like production) cannot import hostkv.common: it loaded the copy
    with open(s.path("/var/log/cobbler/cobbler.log")) as f:
        assert "hostkv: shared rules from %s" % os.path.join(modules, "_lib", "common") in f.read()
    assert os.path.isfile(s.path("/var/lib/cobbler/snippets/hostkv_agent"))
    assert os.path.isfile(s.path("/var/lib/cobbler/templates/sample_hostkv.ks"))
    # the machine's own venv is untouched: the module dir exists only inside the namespace
    assert not os.path.exists(modules)

    status = installer(s, "status")
    assert status.returncode == 0 and "intact" in status.stdout, status.stdout + status.stderr
    again = installer(s, "install")
    assert again.returncode == 0 and "(0 written, 0 removed)" in again.stdout, again.stdout


def test_sync_publishes_repo_over_http(hostkv_cobbler):
    s = hostkv_cobbler
    pub = s.path("/var/www/cobbler/pub")
    assert os.path.islink(os.path.join(pub, "hostkv"))
    repomd = ET.fromstring(fetch(repo_url(s) + "repodata/repomd.xml"))
    types = {d.get("type") for d in repomd.findall(REPO_NS + "data")}
    assert {"primary", "filelists", "other"} <= types
    name = os.path.basename(str(s.rpms.agent))
    with open(str(s.rpms.agent), "rb") as f:
        assert fetch(repo_url(s) + name) == f.read()
    assert not any(n.startswith(".hostkv-tmp-") for n in os.listdir(pub))


def test_real_dnf_lists_the_agent_from_cobbler(hostkv_cobbler, tmp_path):
    out = dnf_repoquery(hostkv_cobbler, tmp_path)
    version = open(os.path.join(REPO, "VERSION")).read().strip()
    assert "hostkv-agent-0:%s-1.noarch" % version in out.split()


def test_republish_is_idempotent_and_swaps_atomically(hostkv_cobbler, tmp_path):
    s = hostkv_cobbler
    link = s.path("/var/www/cobbler/pub/hostkv")
    first = os.readlink(link)
    out = s.cli(["sync"]).stdout
    assert "hostkv: unchanged" in out and os.readlink(link) == first

    # A new release: while `cobbler sync` swaps it in, a reader never sees a broken repo.
    release2 = make_rpms(str(tmp_path / "dist2"), release="2")
    conf = s.path("/etc/hostkv/cobbler.conf")
    original = open(conf).read()
    failures, reads = [], [0]
    done = threading.Event()

    def reader():
        while not done.is_set():
            try:
                repomd = ET.fromstring(fetch(repo_url(s) + "repodata/repomd.xml"))
                for data in repomd.findall(REPO_NS + "data"):
                    fetch(repo_url(s) + data.find(REPO_NS + "location").get("href"))
                reads[0] += 1
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                failures.append(repr(err))

    thread = threading.Thread(target=reader)
    try:
        with open(conf, "w") as f:
            f.write("rpm_dir = %s\n" % os.path.dirname(str(release2.agent)))
        thread.start()
        out = s.cli(["sync"]).stdout
        done.set()
        thread.join(60)
        assert "hostkv: published" in out, out
        assert failures == [] and reads[0] > 0
        assert os.readlink(link) != first
        assert not os.path.exists(os.path.join(os.path.dirname(link), first))  # old repo removed
        assert "-2.noarch" in dnf_repoquery(s, tmp_path)
    finally:
        done.set()
        with open(conf, "w") as f:
            f.write(original)
        s.cli(["sync"])
    assert os.readlink(link) == first   # same RPMs -> same repo name again


def test_sync_without_rpms_or_with_a_bad_config(hostkv_cobbler, tmp_path):
    """No RPMs: a warning, the live repo stays, sync succeeds.  A config typo: sync fails, naming
    the file and line."""
    s = hostkv_cobbler
    link = s.path("/var/www/cobbler/pub/hostkv")
    first = os.readlink(link)
    conf = s.path("/etc/hostkv/cobbler.conf")
    original = open(conf).read()
    try:
        with open(conf, "w") as f:
            f.write("rpm_dir = %s\n" % tmp_path)
        out = s.cli(["sync"]).stdout
        assert "hostkv: no RPMs match hostkv-agent-*.noarch.rpm in %s" % tmp_path in out
        assert "*** TASK COMPLETE ***" in out and os.readlink(link) == first
        with open(conf, "w") as f:
            f.write("# hostkv\nrpm-dir = /x\n")
        proc = s.cli(["sync"], check=False)
        assert "hostkv: /etc/hostkv/cobbler.conf:2: unknown key 'rpm-dir'" in proc.stdout
        assert "TASK FAILED" in proc.stdout and os.readlink(link) == first
    finally:
        with open(conf, "w") as f:
            f.write(original)


# ---------------------------------------------------------------- rendering

def test_profile_renders_with_and_without_hostkv(objects, tmp_path):
    s = objects
    on = render(s, "profile", "hk-on")
    off = render(s, "profile", "hk-off")
    block = hostkv_block(on)
    assert block, on
    assert "hostkv_url='%s'" % repo_url(s) in block
    assert "hostkv_gpgcheck=0" in block
    assert '"$hostkv_pm" -y install hostkv-agent' in block
    assert "systemctl enable hostkv-agent.service" in block
    assert "/root/hostkv-install.log" in block
    assert hostkv_block(off) is None
    assert "# hostkv: hostkv_enabled is not 1/true/yes/on" in off
    assert "hostkv.repo" not in off
    for name, ks in (("on", on), ("off", off)):
        ksvalidate(ks, tmp_path, name)
        bash_n(post_section(ks))


SNIPPET_CALL = re.compile(r"\$SNIPPET\('([\w-]+)'\)")
COBBLER_SAMPLE_KS = glob.glob(os.path.join(VENV, "lib", "python3*", "site-packages", "var", "lib",
                                           "cobbler", "templates", "sample.ks"))


def test_sample_uses_cobblers_usual_snippets(objects, tmp_path):
    """sample_hostkv.ks is Cobbler's own sample.ks plus hostkv's snippet: every snippet and magic
    variable sample.ks uses is there, in the same section, and each renders (repos, network, the
    koan environment) in the kickstart cobblerd serves."""
    assert len(COBBLER_SAMPLE_KS) == 1, COBBLER_SAMPLE_KS
    ours = open(os.path.join(REPO, "kickstart_snippets", "sample_hostkv.ks")).read()
    theirs = open(COBBLER_SAMPLE_KS[0]).read()

    def sections(text):
        """{section header: [snippets and magic variables in it, in order]}"""
        out, head = {}, "commands"
        for line in text.splitlines():
            if line.startswith("#"):
                continue                    # comments (and Cheetah's ## comments) name no snippet
            if line.startswith("%") and not line.startswith("%end"):
                head = line.strip()
            out.setdefault(head, []).extend(SNIPPET_CALL.findall(line) + re.findall(
                r"\$(yum_repo_stanza|yum_config_stanza)\b", line))
        return out

    mine, cobblers = sections(ours), sections(theirs)
    for head, names in cobblers.items():
        assert [n for n in mine.get(head, []) if n != "hostkv_agent"] == names, (head, mine.get(head))
    assert "hostkv_agent" in mine["%post"]
    assert mine["%post"].index("hostkv_agent") < mine["%post"].index("autoinstall_done")

    s = objects
    ks = render(s, "system", "hk-sys-on")
    assert "$SNIPPET" not in ks and "$yum" not in ks, ks          # everything rendered
    assert re.search(r'^echo "export COBBLER_SERVER=\S+" > /etc/profile.d/cobbler.sh$', ks, re.M), ks
    assert "cblr/svc/op/yum/system/hk-sys-on" in post_section(ks)  # $yum_config_stanza
    assert "# Start post_install_network_config generated code" in ks, ks
    assert re.search(r"^network ", ks, re.M), ks                # network_config
    assert hostkv_block(ks)
    ksvalidate(ks, tmp_path, "sample")
    bash_n(post_section(ks))


def test_y_installs_the_agent_as_koan_adds_the_channel(objects, tmp_path):
    """hostkv_enabled=y: the validator accepts it and the rendered kickstart installs the agent (koan
    adds the channel for it too: tests/cobbler/test_cobbler_units.py::test_enabled_words_agree)."""
    ks = render(objects, "profile", "hk-y")
    assert hostkv_block(ks), ks
    ksvalidate(ks, tmp_path, "y")
    bash_n(post_section(ks))


def test_system_values_override_the_profile(objects, tmp_path):
    s = objects
    on = render(s, "system", "hk-sys-on")      # profile off, system hostkv_enabled=Yes
    off = render(s, "system", "hk-sys-off")    # profile on, system hostkv_enabled=OFF
    assert hostkv_block(on) and hostkv_block(off) is None
    for name, ks in (("sys-on", on), ("sys-off", off)):
        ksvalidate(ks, tmp_path, name)
        bash_n(post_section(ks))
    # the installer's view: the same kickstart over Cobbler's HTTP service
    served = fetch(s.url + "/cblr/svc/op/autoinstall/system/hk-sys-on").decode()
    assert hostkv_block(served) == hostkv_block(on)


def test_option_set_over_xmlrpc(objects, tmp_path):
    s = objects
    ensure(s, "profile", "hk-rpc", "--distro=" + DISTRO, "--autoinstall=sample_hostkv.ks")
    assert hostkv_block(render(s, "profile", "hk-rpc")) is None
    api, tok = s.xmlrpc, s.token
    handle = api.get_profile_handle("hk-rpc", tok)
    key = s.url + "/cobbler/pub/RPM-GPG-KEY-hostkv"
    api.modify_profile(handle, "autoinstall_meta", {"hostkv_enabled": "On", "hostkv_gpgcheck": "1",
                                                    "hostkv_gpgkey": key}, tok)
    api.save_profile(handle, tok)
    assert api.get_profile("hk-rpc")["autoinstall_meta"]["hostkv_enabled"] == "On"
    ks = fetch(s.url + "/cblr/svc/op/autoinstall/profile/hk-rpc").decode()
    assert "hostkv_gpgcheck=1" in hostkv_block(ks)
    assert "hostkv_gpgkey='%s'" % key in hostkv_block(ks)
    bash_n(post_section(ks))
    ksvalidate(ks, tmp_path, "rpc")
    # the "k=v k2=v2" string form works too
    handle = api.get_profile_handle("hk-rpc", tok)
    api.modify_profile(handle, "autoinstall_meta", "hostkv_enabled=0", tok)
    api.save_profile(handle, tok)
    assert hostkv_block(render(s, "profile", "hk-rpc")) is None


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("meta, message", [
    ("hostkv_enabled=maybe", "hostkv_enabled='maybe' is not a boolean word"),
    ("hostkv_vm_a/b=1", "hostkv_vm_a/b (hostkv key vm.a/b): key 'vm.a/b' must be"),
    ("hostkv_vm_big=" + "x" * 5000, "value of vm.big is 5000 bytes, the limit is 4096"),
    ("hostkv_enable=1", "hostkv_enable is not a hostkv option"),
    ("hostkv_vm_rack", "hostkv_vm_rack has no value"),
    ("hostkv_gpgkey=http://x/$(reboot)", "hostkv_gpgkey=http://x/$(reboot): not a URL"),
    ("hostkv_vm_motd='  padded'", "Cobbler would hand this value to koan as 'padded', not as given"),
], ids=["not-boolean", "bad-key", "value-too-large", "unknown-option", "no-value", "gpgkey-shell",
        "altered-on-the-way-to-koan"])
# (A control character never reaches the validator from the CLI: Cobbler's XML-RPC cannot carry it
# either - "not well-formed (invalid token)".  check_meta refuses it: test_cobbler_units.py.)
def test_malformed_option_on_a_new_system_is_rejected(objects, meta, message):
    s = objects
    proc = s.cli(["system", "add", "--name=hk-bad", "--profile=hk-off",
                  "--autoinstall-meta=" + meta], check=False)
    assert proc.returncode != 0
    assert "hostkv: system hk-bad rejected, bad autoinstall_meta: " in proc.stdout
    assert message in proc.stdout, proc.stdout
    assert "hk-bad" not in s.xmlrpc.get_item_names("system")
    assert not os.path.exists(s.path("/var/lib/cobbler/collections/systems/hk-bad.json"))


def test_malformed_edit_is_vetoed_and_nothing_changes(objects):
    s = objects
    saved_path = s.path("/var/lib/cobbler/collections/systems/hk-sys-on.json")
    saved = open(saved_path).read()
    before = s.xmlrpc.get_system("hk-sys-on")["autoinstall_meta"]
    proc = s.cli(["system", "edit", "--name=hk-sys-on", "--comment=changed",
                  "--autoinstall-meta=hostkv_enabled=perhaps"], check=False)
    assert proc.returncode != 0 and "hostkv_enabled='perhaps'" in proc.stdout, proc.stdout
    assert open(saved_path).read() == saved                         # on disk
    after = s.xmlrpc.get_system("hk-sys-on")
    assert after["autoinstall_meta"] == before and after["comment"] == ""   # and in cobblerd
    api, tok = s.xmlrpc, s.token
    handle = api.get_system_handle("hk-sys-on", tok)
    api.modify_system(handle, "autoinstall_meta", {"hostkv_vm_bad key": "1"}, tok)
    with pytest.raises(xmlrpc.client.Fault) as err:
        api.save_system(handle, tok)
    assert "hostkv_vm_bad key (hostkv key vm.bad key)" in err.value.faultString
    assert s.xmlrpc.get_system("hk-sys-on")["autoinstall_meta"] == before


def test_profile_and_distro_with_malformed_option_are_rejected(objects):
    s = objects
    proc = s.cli(["profile", "add", "--name=hk-badp", "--distro=" + DISTRO,
                  "--autoinstall-meta=hostkv_gpgcheck=2"], check=False)
    assert proc.returncode != 0
    assert "hostkv: profile hk-badp rejected" in proc.stdout and "hostkv_gpgcheck='2'" in proc.stdout
    assert "hk-badp" not in s.xmlrpc.get_item_names("profile")
    proc = s.cli(["distro", "edit", "--name=" + DISTRO, "--in-place",
                  "--autoinstall-meta=hostkv_enabled=enabled"], check=False)
    assert proc.returncode != 0 and "hostkv: distro %s rejected" % DISTRO in proc.stdout
    assert "hostkv_enabled" not in s.xmlrpc.get_distro(DISTRO)["autoinstall_meta"]


PROBE = """
from cobbler.cexceptions import CX


def register():
    return "/var/lib/cobbler/triggers/add/system/post/*"


def run(api, args):
    if args and args[0].startswith("hk-probe"):
        raise CX("probe: post trigger refuses %s" % args[0])
    return 0
"""


def test_why_pre_a_raising_post_trigger_does_not_reject(objects):
    """The evidence behind using add/*/pre: in Cobbler 3.3 an add/system/post trigger that raises
    makes the call fail, yet the system is saved (disk and memory)."""
    s = objects
    probe = s.path(os.path.join(s.package_dir, "modules", "hk_probe_post.py"))
    with open(probe, "w") as f:
        f.write(PROBE)
    try:
        s.restart()
        proc = s.cli(["system", "add", "--name=hk-probe1", "--profile=hk-off"], check=False)
        assert proc.returncode != 0 and "probe: post trigger refuses hk-probe1" in proc.stdout
        assert "hk-probe1" in s.xmlrpc.get_item_names("system")
        assert os.path.isfile(s.path("/var/lib/cobbler/collections/systems/hk-probe1.json"))
    finally:
        os.unlink(probe)
        # cobblerd's import compiled it (where PYTHONDONTWRITEBYTECODE is not set, as on a fresh
        # machine): leave nothing behind in Cobbler's modules dir
        for pyc in glob.glob(os.path.join(os.path.dirname(probe), "__pycache__", "hk_probe_post.*.pyc")):
            os.unlink(pyc)
        s.restart()
        if "hk-probe1" in s.xmlrpc.get_item_names("system"):
            s.cli(["system", "remove", "--name=hk-probe1"])


# ---------------------------------------------------------------- the %post, for real

def test_rendered_post_installs_the_agent_from_cobbler(objects, tmp_path):
    """The hostkv block of a rendered system kickstart, run by bash in a sandbox.

    It writes /etc/yum.repos.d/hostkv.repo and /root/hostkv-install.log (overlays: the machine's
    files are untouched), and its ``dnf -y install hostkv-agent`` / ``systemctl enable`` act on a
    scratch root through the adapters in post_sandbox.py: real dnf resolves the package in the repo
    the snippet configured (served by Cobbler), real ``rpm -i --nodeps`` installs it -- ``--nodeps``
    only because the empty scratch root's rpm database cannot provide python3 and /bin/sh -- and
    real ``systemctl --root`` enables the unit.  A second run (already installed, so rpm fails) must
    log the failure and still exit 0: a kickstart is never aborted.
    """
    s = objects
    block = hostkv_block(render(s, "system", "hk-sys-on"))
    root, work = str(tmp_path / "root"), str(tmp_path / "work")
    post_sandbox.make_scratch_root(root)
    proc, upper = post_sandbox.run_post(block, root, work)
    assert proc.returncode == 0, proc.stdout
    log = open(os.path.join(upper["root"], "hostkv-install.log")).read()
    assert "hostkv: finished with status 0" in log, log
    assert "scriptlet failed" not in log, log
    repo = open(os.path.join(upper["etc"], "yum.repos.d", "hostkv.repo")).read()
    assert "baseurl=%s\n" % repo_url(s) in repo and "gpgcheck=0\n" in repo
    assert post_sandbox.calls(work) == ["dnf -y install hostkv-agent",
                                        "systemctl enable hostkv-agent.service"]
    q = subprocess.run(["rpm", "--root", root, "-q", "hostkv-agent"], stdout=subprocess.PIPE,
                       universal_newlines=True)
    assert q.returncode == 0 and q.stdout.startswith("hostkv-agent-"), q.stdout
    assert os.path.isfile(os.path.join(root, "usr/lib/hostkv-agent/hostkv/protocol.py"))
    wants = [os.path.join(dirpath, n) for dirpath, _, names in os.walk(os.path.join(root, "etc"))
             for n in names if n == "hostkv-agent.service"]
    assert any(".wants" in w for w in wants), wants

    again, upper = post_sandbox.run_post(block, root, str(tmp_path / "work2"))
    assert again.returncode == 0, again.stdout
    log = open(os.path.join(upper["root"], "hostkv-install.log")).read()
    assert "FAILED: dnf -y install hostkv-agent exited 1" in log, log
    assert "hostkv: finished with status 1" in log
    assert post_sandbox.calls(str(tmp_path / "work2")) == ["dnf -y install hostkv-agent"]


# ---------------------------------------------------------------- uninstall (keep last)

def test_uninstall_removes_exactly_what_install_added(hostkv_cobbler):
    s = hostkv_cobbler
    assert snapshot(s) != s.before_install
    proc = installer(s, "uninstall")
    assert proc.returncode == 0 and "restart cobblerd" in proc.stdout, proc.stdout + proc.stderr
    assert snapshot(s) == s.before_install
    assert installer(s, "status").returncode == 3
    s.restart()
    out = s.cli(["sync"]).stdout
    assert "hostkv:" not in out and "*** TASK COMPLETE ***" in out
