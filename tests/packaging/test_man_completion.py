"""The man pages and bash completions the RPMs ship, generated at build time from the commands'
argparse parsers (packaging/man/clidoc.py): every binary has its page in its own package, the
pages render with man-db/groff and mandoc without a warning, they document every option and
subcommand the parser has, and the completions work in a real bash -- through `complete -p`, the
completion function as bash calls it, and TAB typed into an interactive bash on a pty, completing
a key the agent published and a domain of a real libvirt connection (virsh, test:///default).
"""
import argparse
import importlib
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from tests.harness import rpms as rpmh
from tests.packaging.rpmtools import build, file_list, rpm_root, run

REPO = rpmh.REPO
sys.path.insert(0, str(REPO / "packaging" / "man"))
clidoc = importlib.import_module("clidoc")

MAN_DIRS = ("/usr/share/man/man1/", "/usr/share/man/man5/", "/usr/share/man/man8/")
COMPLETIONS = "usr/share/bash-completion/completions"


@pytest.fixture(scope="module")
def built(rpm_home, tmp_path_factory):
    return build(tmp_path_factory.mktemp("dist"), "1")


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    rpm_root(root, "--noscripts", "-i", str(built.agent), str(built.host), str(built.cobbler))
    return root


@pytest.fixture(scope="module")
def parsers():
    """{command: its argparse parser}, captured from the checkout as clidoc does."""
    clidoc.setup_path(str(REPO))
    return {page.name: clidoc.capture_parser(page.module) for page in clidoc.PAGES}


def rendered(path, width=200):
    """`man -l` of a page as plain text (wide: no hyphenation or breaks inside option names)."""
    env = dict(os.environ, MANWIDTH=str(width), MAN_KEEP_FORMATTING="", LC_ALL="C.UTF-8")
    proc = run(["man", "-l", str(path)], env=env)
    return re.sub(r".\x08", "", proc.stdout)


def section(text, title):
    match = re.search(r"^%s\n(.*?)(?=^\S)" % re.escape(title), text, re.S | re.M)
    assert match, "no %s section in:\n%s" % (title, text)
    return match.group(1)


# ----------------------------------------------------------------------------- man pages

def test_every_binary_has_its_man_page_in_its_own_package(built):
    for rpm, name in ((built.agent, "hostkv-agent"), (built.host, "hostkv-host"),
                      (built.cobbler, "hostkv-cobbler")):
        files = file_list(rpm)
        binaries = {os.path.basename(f) for f in files if re.match(r"^/usr/s?bin/[^/]+$", f)}
        pages = {os.path.basename(f) for f in files if f.startswith(MAN_DIRS)}
        assert binaries, name
        for binary in binaries:
            assert {"%s.1.gz" % binary, "%s.8.gz" % binary} & pages, (name, binary, sorted(pages))
        # and clidoc's table says the same
        expected = {p.filename + ".gz" for p in clidoc.PAGES if p.package == name}
        expected |= {n + ".gz" for n, package in clidoc.STATIC_PAGES if package == name}
        assert pages == expected, (name, sorted(pages))
    assert "/usr/share/man/man5/hostkvd.conf.5.gz" in file_list(built.host)


def test_man_pages_render_without_warnings(installed):
    """man-db + groff with --warnings (stderr must stay empty) and mandoc's lint, on the
    installed (gzipped) pages."""
    pages = sorted(p for d in MAN_DIRS for p in (installed / d.lstrip("/")).glob("*.gz"))
    assert len(pages) == len(clidoc.PAGES) + len(clidoc.STATIC_PAGES)
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    for page in pages:
        proc = run(["man", "--warnings", "-l", str(page)], env=env)
        assert proc.stderr == "" and "NAME" in proc.stdout, (page, proc.stderr)
        lint = run(["mandoc", "-T", "lint", "-W", "warning", str(page)], check=False)
        assert lint.returncode == 0 and lint.stdout + lint.stderr == "", (page, lint.stdout, lint.stderr)


def test_the_render_checks_can_fail(tmp_path):
    bad = tmp_path / "bad.1"
    bad.write_text('.TH BAD 1 "December 1, 2026"\n.SH NAME\nbad \\- x\n.XX unknown macro\n')
    assert "XX" in run(["man", "--warnings", "-l", str(bad)], env=dict(os.environ, MANWIDTH="80")).stderr
    assert run(["mandoc", "-T", "lint", "-W", "warning", str(bad)], check=False).returncode != 0


def _walk(parser, path=()):
    yield path, parser
    for name, sub in sorted(clidoc.subparsers_of(parser).items()):
        yield from _walk(sub, path + (name,))


def test_man_pages_document_every_option_and_subcommand(installed, parsers):
    """Generated from the parser: each (nested) subcommand and each option string of the
    command's parser appears in its page, as does its NAME line."""
    for page in clidoc.PAGES:
        text = rendered(installed / ("usr/share/man/man%d/%s.gz" % (page.section, page.filename)))
        assert "%s - %s" % (page.name, page.description) in text
        for path, parser in _walk(parsers[page.name]):
            if path:
                assert " ".join((page.name,) + path) in text, (page.name, path)
            for action in parser._actions:
                if action.help == "==SUPPRESS==" or isinstance(action, argparse._HelpAction):
                    continue        # -h/--help: in the SYNOPSIS only, as argparse-manpage renders it
                for opt in action.option_strings:
                    assert re.search(r"(^|[\s\[])%s\b" % re.escape(opt), text), (page.name, path, opt)


def test_installed_pages_are_what_the_checkout_generates(installed, tmp_path):
    """Built from the same source as --help: regenerating from this checkout gives the same pages
    (but the date line)."""
    out = tmp_path / "gen"
    run([sys.executable, str(REPO / "packaging/man/clidoc.py"), "--out", str(out)], timeout=120)
    for page in list(clidoc.PAGES):
        installed_text = run(["zcat", str(installed / ("usr/share/man/man%d/%s.gz" % (page.section, page.filename)))]).stdout
        fresh = (out / "man" / page.filename).read_text()
        strip = lambda t: re.sub(r'^\.TH .*$', "", t, count=1, flags=re.M)   # noqa: E731
        assert strip(installed_text) == strip(fresh), page.filename


def test_help_change_reaches_the_page(tmp_path):
    """A new option in a command's parser shows up in its page without touching packaging/
    (the generator reads the parser that main() builds)."""
    src = rpmh.copy_sources(tmp_path / "src")
    cli = src / "koan_patch/hostkv_koan/cli.py"
    cli.write_text(cli.read_text().replace(
        '    sub.add_parser("uninstall", help="remove the extension (idempotent)")',
        '    sub.add_parser("uninstall", help="remove the extension (idempotent)")\n'
        '    sub.add_parser("frobnicate", help="a subcommand added later")'))
    out = tmp_path / "gen"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run([sys.executable, str(src / "packaging/man/clidoc.py"), "--srcdir", str(src), "--out", str(out)],
        env=env, timeout=120)
    assert "hostkv-koan frobnicate" in rendered(out / "man/hostkv-koan.8")


@pytest.mark.parametrize("command, module", [("hostkv", "hostkv.agent.cli"),
                                             ("hostkvctl", "hostkv.hostkvctl.cli")])
def test_exit_status_sections_list_every_exit_code(installed, command, module):
    """The hand-written EXIT STATUS sections stay complete: every EXIT_* constant of the command."""
    clidoc.setup_path(str(REPO))
    mod = importlib.import_module(module)
    codes = sorted({v for k, v in vars(mod).items() if k.startswith("EXIT_") and isinstance(v, int)})
    page = next(p for p in clidoc.PAGES if p.name == command)
    exit_status = section(rendered(installed / ("usr/share/man/man%d/%s.gz" % (page.section, page.filename))),
                          "EXIT STATUS")
    listed = sorted(int(n) for n in re.findall(r"^\s{7}(\d+)\s", exit_status, re.M))
    assert listed == codes, (command, listed, codes)


def test_hostkvd_conf_page_documents_the_config(installed):
    """hostkvd.conf(5) is hand-written: every section and [daemon] option the parser accepts is in it."""
    from hostkv.hostkvd import config
    text = rendered(installed / "usr/share/man/man5/hostkvd.conf.5.gz")
    for option in config.DAEMON_OPTIONS:
        assert re.search(r"^\s+%s = " % option, text, re.M), option
    with pytest.raises(config.ConfigError) as err:      # the parser names the sections it knows
        config.parse("[no-such-section]\n", "x.conf")
    sections = re.findall(r"\[(\w+)\]", str(err.value).split("known:")[1])
    assert sections
    for name in sections:
        assert "SECTION [%s]" % name in text
    assert "hostkv %s" % rpmh.version() in text and "@" not in text.split("\n")[-2]


# ----------------------------------------------------------------------------- bash completion

def bash(script, env=None):
    return run(["bash", "--norc", "--noprofile", "-c", script], env=env, timeout=60)


def complete(installed, command, line, env=None):
    """COMPREPLY of the installed completion for ``line``, called the way bash calls it."""
    script = r'''
source "$1"
COMP_LINE=$2; COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE =~ [[:space:]]$ ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
_%s "%s" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%%s\n' "${COMPREPLY[@]}"
''' % (command, command)
    proc = run(["bash", "--norc", "--noprofile", "-c", script, "bash",
                str(installed / COMPLETIONS / command), line], env=env, timeout=60)
    return [w for w in proc.stdout.splitlines() if w]


@pytest.fixture
def run_dir(tmp_path):
    keys = tmp_path / "run" / "keys"
    keys.mkdir(parents=True)
    for key in ("host.hostname", "host.rack", "vm.role"):
        (keys / key).write_text("x")
    return tmp_path / "run"


def test_completions_register(installed):
    for command in clidoc.COMPLETIONS:
        proc = bash('source "%s"; complete -p %s' % (installed / COMPLETIONS / command, command))
        assert proc.stdout.strip() == "complete -F _%s %s" % (command, command)


def test_hostkv_completes_commands_options_and_published_keys(installed, run_dir):
    env = dict(os.environ, HOSTKV_RUN_DIR=str(run_dir))
    assert complete(installed, "hostkv", "hostkv ", env) == ["env", "get", "list", "status", "watch"]
    assert complete(installed, "hostkv", "hostkv get ", env) == ["host.hostname", "host.rack", "vm.role"]
    assert complete(installed, "hostkv", "hostkv get host.h", env) == ["host.hostname"]
    assert complete(installed, "hostkv", "hostkv watch --timeout 5 v", env) == ["vm.role"]
    assert "--fresh" in complete(installed, "hostkv", "hostkv get --", env)
    # --run-dir on the line wins over the environment
    assert complete(installed, "hostkv", "hostkv --run-dir /nonexistent get ", env) == []
    assert complete(installed, "hostkv", "hostkv --run-dir %s get vm" % run_dir) == ["vm.role"]
    assert complete(installed, "hostkv", "hostkv get host.hostname ", env) == []   # one KEY only


def test_hostkvctl_completes_domains_from_libvirt(installed):
    """Domains from the real virsh: libvirt's test driver has one domain, "test"."""
    assert complete(installed, "hostkvctl", "hostkvctl ") == ["check", "disable", "enable", "host", "reload",
                                                             "status", "vm"]
    assert complete(installed, "hostkvctl", "hostkvctl vm ") == ["get", "link", "policy", "set", "unlink", "unset"]
    line = "hostkvctl --connect test:///default vm set "
    assert complete(installed, "hostkvctl", line) == ["test"]
    assert complete(installed, "hostkvctl", line + "test ") == []            # then KEY=VALUE
    env = dict(os.environ, LIBVIRT_DEFAULT_URI="test:///default")
    assert complete(installed, "hostkvctl", "hostkvctl enable te", env) == ["test"]
    assert complete(installed, "hostkvctl", "hostkvctl enable test ", env) == ["test"]   # DOMAIN...
    assert "--next-boot" in complete(installed, "hostkvctl", "hostkvctl enable --", env)


def _interactive_tab(installed, command, typed, env, expect, timeout=20):
    """Type ``typed`` + TAB into an interactive bash on a pty; return the screen once ``expect``
    shows up on it."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "-i"], env)
    screen = b""
    try:
        os.write(fd, ('PS1="$ "; source %s\n' % (installed / COMPLETIONS / command)).encode())
        os.write(fd, typed.encode() + b"\t")
        deadline = time.monotonic() + timeout
        while expect.encode() not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(fd, 4096)
                except OSError:
                    break
        return screen.decode(errors="replace")
    finally:
        os.write(fd, b"\x03exit\n")
        os.close(fd)
        os.waitpid(pid, 0)


def test_tab_in_an_interactive_bash(installed, run_dir):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(run_dir), "TERM": "dumb", "HOSTKV_RUN_DIR": str(run_dir),
           "LIBVIRT_DEFAULT_URI": "test:///default"}
    screen = _interactive_tab(installed, "hostkv", "hostkv get host.ho", env, "host.hostname ")
    assert "hostkv get host.hostname " in screen, screen
    screen = _interactive_tab(installed, "hostkvctl", "hostkvctl vm get te", env, "vm get test ")
    assert "hostkvctl vm get test " in screen, screen
