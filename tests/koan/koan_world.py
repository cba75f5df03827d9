"""Everything `koan --virt` needs, all real: cobblerd 3.3.10, a libvirt KVM "host", koan 3.0.1.

    world = KoanWorld(image).start()
    world.add_system("web1", profile=world.HOSTKV_PROFILE, meta="hostkv_vm_role=web")
    res = world.koan("web1")                  # koan --virt inside the host (KoanRun)
    res.rc, res.output, res.argv              # argv = the virt-install command koan ran
    world.stop()

What is where:
  * ``cobbler`` - tests/harness/cobbler_server.CobblerServer (its own mount namespace, HTTP front on
    127.0.0.1:<port>).
  * ``host`` - tests/koan/koan_host.KoanLibvirtHost (mount + UTS + network namespace, libvirtd,
    the isolated bridge hkvbr0) with hostkvd running in it (libvirt source, qemu:///system).
    Cobbler's HTTP port is forwarded into the host's loopback (same port), so koan, Cobbler's
    URLs and virt-install see one address, 127.0.0.1:<port>, as on a real KVM host.
  * koan runs INSIDE the host's namespaces: its qemu:///system, /var/lib/libvirt/images and
    network are the host's (no URI override in the extension: koan believes it is on the host).
  * ``env`` - tests/koan/koan_env.KoanEnv: koan 3.0.1 in its own venv, hostkv-koan installed.

The installer that is not one: the Cobbler distro's kernel/initrd ARE the hostkv test guest
(tests/harness/guest_image.py), published as an install tree under Cobbler's
/var/www/cobbler/distro_mirror/<distro>/ with a .treeinfo, the way Cobbler serves imported trees.
koan reads the tree URL from the rendered kickstart (Cobbler's shipped sample.ks: ``url
--url=$tree``) and hands it to virt-install --location, which fetches that kernel+initrd and boots
them.  The "installer" therefore never installs anything: it is the busybox+python test guest that
starts the hostkv agent and the test exec server.  The distro is breed redhat / os-version rhel6
because koan passes ``--os-variant rhel6.0`` for it, a variant virt-install knows and for which it
does not raise the guest's RAM for a network install (rhel8/9 would force 3 GiB).
"""

import ast
import json
import os
import shutil
import subprocess
import tempfile

from tests.harness.cobbler_server import CobblerServer
from tests.harness.exec_client import ExecClient
from tests.harness.libvirt_hosts import HarnessError, TEST_EXEC_PORT, wait_for
from tests.koan.koan_env import KoanEnv
from tests.koan.koan_host import BRIDGE, KoanLibvirtHost, forward_tcp

DISTRO = "hostkv-test"
HOSTKV_PROFILE = "hostkv-web"      # autoinstall_meta hostkv_enabled=1
PLAIN_PROFILE = "plain"            # no hostkv settings
DISK_GB = 2                        # virt_file_size; Cobbler 3.3 stores and sends it as 2.0

TREEINFO = """[general]
family = hostkv-test
version = 1
arch = x86_64
name = hostkv test guest (boots to the agent; installs nothing)
[images-x86_64]
kernel = images/pxeboot/vmlinuz
initrd = images/pxeboot/initrd.img
"""

EXEC_CHANNEL_XML = ("<channel type='unix'><source mode='bind'/>"
                    "<target type='virtio' name='%s'/></channel>" % TEST_EXEC_PORT)


class KoanRun(object):
    """One koan run: ``rc``, ``output`` (stdout+stderr), ``argv`` (virt-install argv or None)."""

    def __init__(self, proc):
        self.rc = proc.returncode
        self.output = proc.stdout + proc.stderr
        self.argv = None
        for line in proc.stdout.splitlines():
            if line.startswith("- ['virt-install', '--connect'"):
                self.argv = ast.literal_eval(line[2:])

    def __repr__(self):
        return "KoanRun(rc=%r)\n%s" % (self.rc, self.output[-6000:])


class KoanWorld(object):
    HOSTKV_PROFILE = HOSTKV_PROFILE
    PLAIN_PROFILE = PLAIN_PROFILE

    def __init__(self, image):
        self.image = image
        self.base = tempfile.mkdtemp(prefix="hostkv-koan-")
        os.chmod(self.base, 0o755)
        self.cobbler = None
        self.host = None
        self.forward = None
        self.hostkvd = None
        self.env = None

    # ------------------------------------------------------------ lifecycle
    def start(self):
        try:
            self.cobbler = CobblerServer().start()
            self.host = KoanLibvirtHost("koanhost", os.path.join(self.base, "host")).start()
            self.forward = forward_tcp(self.host, self.cobbler.http_port, self.base)
            self.hostkvd = self.host.start_hostkvd("")
            self.env = KoanEnv.create(os.path.join(self.base, "venv"))
            res = self.env.hostkv_koan(["install"])
            if res.returncode != 0:
                raise HarnessError("hostkv-koan install failed: %s%s" % (res.stdout, res.stderr))
            self._register()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        for part in (self.forward, self.host, self.cobbler):
            if part is not None:
                try:
                    part.stop()
                except Exception:  # noqa: BLE001 - stop the rest anyway
                    pass
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------ Cobbler objects
    @property
    def tree_url(self):
        return "%s/cobbler/distro_mirror/%s" % (self.cobbler.url, DISTRO)

    def _register(self):
        tree = self.cobbler.path("/var/www/cobbler/distro_mirror/%s" % DISTRO)
        os.makedirs(os.path.join(tree, "images", "pxeboot"))
        os.symlink(self.image.kernel, os.path.join(tree, "images", "pxeboot", "vmlinuz"))
        os.symlink(self.image.initrd, os.path.join(tree, "images", "pxeboot", "initrd.img"))
        with open(os.path.join(tree, ".treeinfo"), "w") as f:
            f.write(TREEINFO)
        cli = self.cobbler.cli
        cli(["distro", "add", "--name=" + DISTRO, "--kernel=" + self.image.kernel,
             "--initrd=" + self.image.initrd, "--arch=x86_64", "--breed=redhat", "--os-version=rhel6",
             "--autoinstall-meta=tree=" + self.tree_url])
        common = ["--distro=" + DISTRO, "--virt-type=qemu", "--virt-bridge=" + BRIDGE,
                  "--virt-ram=256", "--virt-cpus=1", "--virt-file-size=%d" % DISK_GB,
                  "--virt-auto-boot=0", "--autoinstall=sample.ks",
                  "--kernel-options=panic=-1 quiet"]
        cli(["profile", "add", "--name=" + HOSTKV_PROFILE, "--autoinstall-meta=hostkv_enabled=1"]
            + common)
        cli(["profile", "add", "--name=" + PLAIN_PROFILE] + common)

    def add_system(self, name, profile, meta=None, mac="52:54:00:00:00:01"):
        """A Cobbler system with one interface (virt_bridge left to inherit)."""
        args = ["system", "add", "--name=" + name, "--profile=" + profile, "--interface=eth0",
                "--mac-address=" + mac]
        if meta:
            args.append("--autoinstall-meta=" + meta)
        self.cobbler.cli(args)

    def rendered(self, name):
        return self.cobbler.xmlrpc.get_system_as_rendered(name)

    # ------------------------------------------------------------ koan
    def koan(self, system, disable=(), env=None, extra=(), timeout=300):
        """``koan --virt --system=NAME --server=127.0.0.1 --port=P --graphics=none`` in the host."""
        env = env or self.env
        environ = env.clean_env()
        if disable:
            environ["HOSTKV_KOAN_DISABLE"] = ",".join(disable)
        argv = [env.koan, "--virt", "--system=" + system, "--server=127.0.0.1",
                "--port=%d" % self.cobbler.http_port, "--graphics=none"] + list(extra)
        proc = self.host.run_in_ns(argv, capture_output=True, text=True, timeout=timeout,
                                   env=environ, cwd="/")
        return KoanRun(proc)

    # ------------------------------------------------------------ domains
    def conn(self):
        return self.host.open()

    def domain_names(self):
        c = self.conn()
        try:
            return sorted(d.name() for d in c.listAllDomains())
        finally:
            c.close()

    def domain_xml(self, name, inactive=False):
        import libvirt
        c = self.conn()
        try:
            flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
            return c.lookupByName(name).XMLDesc(flags)
        finally:
            c.close()

    def disk_path(self, name):
        """koan's default disk image for domain ``name``, as reachable from outside."""
        return self.host.outside_path("/var/lib/libvirt/images/%s-disk0" % name)

    def remove_domain(self, name):
        """Destroy + undefine ``name`` (if it exists) and delete its koan disk image."""
        import libvirt
        c = self.conn()
        try:
            try:
                dom = c.lookupByName(name)
            except libvirt.libvirtError:
                dom = None
            if dom is not None:
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        finally:
            c.close()
        if os.path.exists(self.disk_path(name)):
            os.unlink(self.disk_path(name))

    def guest_exec(self, name):
        """Hot-plug the test exec channel into running domain ``name``; an ExecClient for it.

        koan builds the domain, so it has no test exec port; the hostkv channel's virtio-serial
        controller (which virt-install added) takes the hot-plugged port, and the guest's exec
        server finds it through sysfs."""
        import libvirt
        from hostkv.common import domain_xml
        c = self.conn()
        try:
            c.lookupByName(name).attachDeviceFlags(EXEC_CHANNEL_XML, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        finally:
            c.close()

        def sock():
            path, problem = domain_xml.channel_socket_path(self.domain_xml(name), TEST_EXEC_PORT)
            if path is None:
                raise HarnessError("domain %s: no exec channel socket: %s" % (name, problem))
            return self.host.outside_path(path)
        return ExecClient(sock, reconnect_each=True, error=HarnessError)

    def wait_exec(self, ex, name, timeout=120):
        try:
            wait_for(lambda: ex.ping(3.0), timeout, interval=0.3, what="guest %s to boot" % name)
        except HarnessError as err:
            raise HarnessError("%s\nqemu log:\n%s" % (err, self.qemu_log(name)))

    def qemu_log(self, name):
        path = self.host.outside_path("/var/log/libvirt/qemu/%s.log" % name)
        try:
            with open(path, errors="replace") as f:
                return f.read()[-3000:]
        except OSError as err:
            return "(%s)" % err


def argv_value(argv, option):
    """The value after ``option`` in ``argv`` (or of ``option=value``), else None."""
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg[len(option) + 1:]
    return None


def image_virtual_size(path):
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True, timeout=30).stdout
    return json.loads(out)["virtual-size"]

