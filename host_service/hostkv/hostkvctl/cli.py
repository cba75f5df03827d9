"""hostkvctl's command line: argument parsing, output, exit codes.

Exit codes (stable, for scripts):
  0  success (also: nothing to do, e.g. enable on an enabled domain)
  1  the operation failed: hostkvd or libvirt refused it, or a domain can't be changed
  2  usage error: bad arguments, invalid key or value (nothing was changed)
  3  hostkvd is not reachable on its control socket (status, host set/unset)
  4  libvirt is not reachable, or no such domain
  5  not running as root
"""

import argparse
import json
import os
import sys
import time

from hostkv.common import domain_xml, entries, paths
from hostkv.common.version import VERSION
from hostkv.hostkvctl import control_client, enable as enable_mod, libvirt_conn, vm_keys

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_DAEMON, EXIT_NO_LIBVIRT, EXIT_NOT_ROOT = 0, 1, 2, 3, 4, 5
DEFAULT_URI = paths.LIBVIRT_URI


class Failure(Exception):
    """Print ``message`` to stderr and exit with ``code``."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def scoped_key(key, scope):
    """``role`` -> ``vm.role`` for scope vm; full keys stay; validates (hostkv.common.entries'
    bare-key rule, the same as hostkvd.conf's [host] section)."""
    try:
        return entries.scoped_key(key, scope)
    except entries.EntryError as err:
        if err.code == "bad-scope":
            raise Failure(EXIT_USAGE, "%s (use 'hostkvctl %s ...')"
                          % (err, "host set" if scope == "vm" else "vm set DOMAIN"))
        raise Failure(EXIT_USAGE, str(err))


def parse_assignments(items, scope):
    """``['role=web', 'vm.tier=1']`` -> validated ``{'vm.role': 'web', 'vm.tier': '1'}``."""
    values = {}
    for item in items:
        if "=" not in item:
            raise Failure(EXIT_USAGE, "expected KEY=VALUE, got %r" % item)
        key, value = item.split("=", 1)
        key = scoped_key(key.strip(), scope)
        try:
            entries.validate_value(key, value)
        except entries.EntryError as err:
            raise Failure(EXIT_USAGE, str(err))
        values[key] = value
    return values


def build_parser():
    p = argparse.ArgumentParser(prog="hostkvctl", description="Administer hostkv on this host (root only).",
                                epilog="Exit codes: 0 ok, 1 failed, 2 usage, 3 hostkvd unreachable, "
                                       "4 libvirt unreachable or no such domain, 5 not root.")
    p.add_argument("--connect", default=None, metavar="URI",
                   help="libvirt URI (default $LIBVIRT_DEFAULT_URI, else %s)" % DEFAULT_URI)
    p.add_argument("--control-socket", default=control_client.DEFAULT_PATH, metavar="PATH",
                   help="hostkvd's control socket (default %(default)s)")
    p.add_argument("--port-name", default=paths.PORT_NAME, help=argparse.SUPPRESS)
    p.add_argument("--version", action="version", version="hostkvctl %s" % VERSION)
    # every command that reports something takes --json: one JSON object on stdout (errors too)
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("status", help="what hostkvd serves", parents=[js])

    h = sub.add_parser("host", help="host.* keys (hostkvd's config)")
    hs = h.add_subparsers(dest="action", metavar="ACTION")
    hs.required = True
    hs.add_parser("set", help="set KEY=VALUE...", parents=[js]).add_argument(
        "assignments", nargs="+", metavar="KEY=VALUE")
    hs.add_parser("unset", help="remove KEY...", parents=[js]).add_argument("keys", nargs="+", metavar="KEY")

    v = sub.add_parser("vm", help="vm.* keys of a domain (libvirt metadata)")
    vs = v.add_subparsers(dest="action", metavar="ACTION")
    vs.required = True
    g = vs.add_parser("get", help="show DOMAIN's keys (KEY=VALUE lines), or one KEY's value", parents=[js])
    g.add_argument("domain")
    g.add_argument("key", nargs="?", metavar="KEY", help="print only this key's value (and a newline)")
    g.add_argument("--config", action="store_true", help="the persistent definition, not the live domain")
    vset = vs.add_parser("set", help="set DOMAIN KEY=VALUE...", parents=[js])
    vset.add_argument("domain")
    vset.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    vun = vs.add_parser("unset", help="remove DOMAIN KEY...", parents=[js])
    vun.add_argument("domain")
    vun.add_argument("keys", nargs="+", metavar="KEY")
    vpol = vs.add_parser("policy", help="which host.* keys DOMAIN sees: all, none, opaque (or default)",
                         parents=[js])
    vpol.add_argument("domain")
    vpol.add_argument("policy", nargs="?", choices=domain_xml.POLICIES + ("default",),
                      help="all: every host key; opaque: the host's names replaced by an opaque id; "
                           "none: no host key; default: the host's default_policy (no value: show it)")
    vlink = vs.add_parser("link", help="take DOMAIN's vm.* keys from a Cobbler system (or profile), live",
                          parents=[js])
    vlink.add_argument("domain")
    which = vlink.add_mutually_exclusive_group(required=True)
    which.add_argument("--cobbler-system", metavar="NAME")
    which.add_argument("--cobbler-profile", metavar="NAME")
    vlink.add_argument("--cobbler-server", metavar="URL",
                       help="the Cobbler server (default: the one hostkvd's [cobbler] section polls)")
    vunl = vs.add_parser("unlink", help="stop taking DOMAIN's keys from Cobbler", parents=[js])
    vunl.add_argument("domain")
    vunl.add_argument("--keep-keys", action="store_true", help="keep Cobbler's keys as local keys")

    sub.add_parser("reload", help="make hostkvd re-read its config; fails (exit 1) if it refuses it",
                   parents=[js])
    c = sub.add_parser("check", help="check a config file (default hostkvd's) without applying it",
                       parents=[js])
    c.add_argument("file", nargs="?", metavar="FILE")

    for name, text in (("enable", "hot-plug and persist the hostkv channel"),
                       ("disable", "remove what enable added")):
        e = sub.add_parser(name, help=text, parents=[js])
        e.add_argument("domains", nargs="*", metavar="DOMAIN")
        e.add_argument("--all", action="store_true", help="every domain of this libvirt connection")
        if name == "enable":
            e.add_argument("--next-boot", action="store_true",
                           help="only the persistent definition (a running domain without a virtio-serial "
                                "controller: libvirt cannot hot-plug one)")
    return p


# ---------------------------------------------------------------- commands

def _control(args, obj):
    try:
        reply = control_client.request(args.control_socket, obj)
    except control_client.DaemonUnreachable as err:
        raise Failure(EXIT_NO_DAEMON, str(err))
    if not reply.get("ok"):
        raise Failure(EXIT_FAILED, "hostkvd: %s" % reply.get("error", "request failed"))
    return reply


def _when(epoch):
    """An epoch as local time for humans ('-' for never)."""
    if not epoch:
        return "-"
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _table(out, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header) - 1)]
    for row in [header] + rows:
        cells = ["%-*s" % (w, c) for w, c in zip(widths, row)] + [str(row[-1])]
        out.write("  " + "  ".join(cells).rstrip() + "\n")


def cmd_status(args, out):
    status = _control(args, {"op": "status"})["status"]
    if args.json:
        out.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    out.write("%s  pid %s  host_id %s  started %s\nconfig %s\n" % (
        status.get("server"), status.get("pid"), status.get("host_id"), _when(status.get("started")),
        status.get("config")))
    src = status.get("source") or {}
    if src.get("source") == "libvirt":
        state = src.get("state")
        line = "libvirt %s: %s since %s" % (src.get("uri"), state, _when(src.get("since")))
        if state == "down" and src.get("why"):
            line += " (%s)" % src["why"]
        out.write(line + "\n")
    if status.get("status_line"):
        out.write("status: %s\n" % status["status_line"])
    host_values = status.get("host_values", {})
    origins = status.get("host_origins", {})
    out.write("host values (%d):\n" % len(host_values))
    for key, value in sorted(host_values.items()):
        out.write("  %s = %s%s\n" % (key, json.dumps(value, ensure_ascii=False),
                                     "  (%s)" % origins[key] if key in origins else ""))
    for line in keysource_lines(status.get("keysources", {})):
        out.write(line + "\n")
    channels = status.get("channels", [])
    out.write("channels: %d (default policy %s)\n" % (len(channels), status.get("default_policy", "all")))
    if channels:
        rows = [(ch.get("label"), ch.get("describe") or ch.get("state"), ch.get("generation"), ch.get("pushes"),
                 ch.get("connects"), _when(ch.get("last_push")), ch.get("path"))
                for ch in sorted(channels, key=lambda c: str(c.get("label")))]
        _table(out, ("DOMAIN", "STATE", "GENERATION", "PUSHES", "CONNECTS", "LAST PUSH", "PATH"), rows)
        for ch in sorted(channels, key=lambda c: str(c.get("label"))):
            extra = describe_guest(ch)
            if extra:
                out.write("  %s: %s\n" % (ch.get("label"), extra))
    unusable = src.get("unusable") or []
    if unusable:
        out.write("unusable channels: %d\n" % len(unusable))
        _table(out, ("DOMAIN", "WHY"), [(u.get("domain"), u.get("why")) for u in unusable])
    return EXIT_OK


def keysource_lines(keysources):
    """``hostkvctl status`` lines for the key sources (``cobbler: ...``)."""
    lines = []
    for name, ks in sorted(keysources.items()):
        state = ks.get("state")
        head = "%s: %s %s" % (name, ks.get("server", ""), state)
        if state in ("unreachable", "needs-token"):
            head = "%s: %s since %s (%s)" % (name, state, _when(ks.get("since")), ks.get("reason"))
            head += "; last known keys stay"
        else:
            head += " (polled %s, every %g s; last change seen %s)" % (
                _when(ks.get("last_poll")), ks.get("interval") or 0, _when(ks.get("last_change")))
        lines.append(head)
        host = ks.get("host_record")
        values = ks.get("host_values") or {}
        lines.append("  host record: %s%s" % (
            host or "none", " -> %s" % ", ".join(sorted(values)) if values else ""))
        if ks.get("host_values_from") == "cache":
            lines.append("  host keys from the cache (Cobbler has not answered since hostkvd started)")
        if ks.get("host_problem"):
            lines.append("  host record: %s" % ks["host_problem"])
        for label, guest in sorted((ks.get("guests") or {}).items()):
            if guest.get("problem"):
                lines.append("  %s: %s" % (label, guest["problem"]))
        for label, server in sorted((ks.get("other_servers") or {}).items()):
            lines.append("  %s: linked to %s, which this hostkvd does not poll" % (label, server))
    return lines


def describe_guest(ch):
    """The status line under a channel: its policy and where its vm.* keys come from."""
    parts = []
    if ch.get("policy"):
        parts.append("policy %s%s" % (ch["policy"], " (host default)" if ch.get("policy_from") == "default" else ""))
    counts = {}
    for origin in (ch.get("vm_origins") or {}).values():
        counts[origin] = counts.get(origin, 0) + 1
    if counts:
        parts.append("vm keys: " + ", ".join("%d %s" % (n, o) for o, n in sorted(counts.items())))
    for stype, attrs in sorted((ch.get("links") or {}).items()):
        parts.append("linked: %s" % domain_xml.SourceLink(stype, attrs).describe())
    return "; ".join(parts)


def _report(args, out, obj, text):
    """Write ``obj`` as JSON (--json) or ``text`` (one or more lines) to ``out``."""
    if getattr(args, "json", False):
        out.write(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    elif text:
        out.write(text if text.endswith("\n") else text + "\n")


def cmd_host(args, out):
    if args.action == "set":
        reply = _control(args, {"op": "host-set", "values": parse_assignments(args.assignments, "host")})
    else:
        keys = [scoped_key(k, "host") for k in args.keys]
        reply = _control(args, {"op": "host-unset", "keys": keys})
    _report(args, out, reply, reply.get("message", "ok"))
    return EXIT_OK


def cmd_reload(args, out):
    reply = _control(args, {"op": "reload"})
    _report(args, out, reply, reply.get("message", "ok"))
    return EXIT_OK


def cmd_check(args, out):
    """Parse FILE (default: hostkvd's config) as hostkvd would, without touching hostkvd."""
    from hostkv.hostkvd import config, hostvalues
    from hostkv.hostkvd.daemon import check_host_values
    from hostkv import protocol
    path = args.file or os.environ.get("HOSTKVD_CONFIG") or config.DEFAULT_PATH
    try:
        cfg = config.load(path)
        check_host_values(hostvalues.host_values(cfg))
    except (config.ConfigError, protocol.ProtocolError) as err:
        text = str(err)    # config errors already start with path:line
        raise Failure(EXIT_FAILED, "refused: %s" % (text if text.startswith(path) else "%s: %s" % (path, text)))
    _report(args, out, {"ok": True, "file": path, "host_keys": sorted(cfg.host_values)},
            "%s: ok (%d host key(s))" % (path, len(cfg.host_values)))
    return EXIT_OK


def _domain(args, conn, ident):
    try:
        return libvirt_conn.lookup(conn, ident)
    except libvirt_conn.NoSuchDomain as err:
        raise Failure(EXIT_NO_LIBVIRT, str(err))


def _open(args):
    try:
        return libvirt_conn.open_connection(args.connect)
    except libvirt_conn.LibvirtUnavailable as err:
        raise Failure(EXIT_NO_LIBVIRT, str(err))


def _warn(problems, err):
    for p in problems:
        err.write("warning: %s (dropped)\n" % p)


def cmd_vm(args, out, err):
    import libvirt
    if args.action == "set":
        values = parse_assignments(args.assignments, "vm")
    elif args.action == "unset":
        keys = [scoped_key(k, "vm") for k in args.keys]
    elif args.action == "link":
        link = _link_from_args(args)
    conn = _open(args)
    try:
        dom = _domain(args, conn, args.domain)
        if args.action == "get":
            meta, problems = vm_keys.get(dom, config=args.config)
            _warn(problems, err)
            if args.key is not None:
                values = meta.effective()[0]
                key = scoped_key(args.key, "vm")
                if key not in values:
                    raise Failure(EXIT_FAILED, "%s has no key %s" % (dom.name(), key))
                # the value byte for byte, then a newline (like `hostkv get`)
                _report(args, out, {"domain": dom.name(), "key": key, "value": values[key],
                                    "origin": meta.effective()[1].get(key)}, None)
                if not args.json:
                    out.write(values[key] + "\n")
                return EXIT_OK
            write_vm_get(out, dom.name(), meta, args.json)
            return EXIT_OK
        if args.action == "policy" and args.policy is None:
            meta, problems = vm_keys.get(dom)
            _warn(problems, err)
            _report(args, out, {"domain": dom.name(), "policy": meta.policy},
                    "%s: policy %s" % (dom.name(), meta.policy or "not set (the host's "
                                       "default_policy applies: hostkvctl status)"))
            return EXIT_OK
        note = ""
        report = {"ok": True, "domain": dom.name(), "action": args.action}
        if args.action == "set":
            _check_deliverable(args, dom, values, err)
            done = vm_keys.set_keys(dom, values)
            report["keys"] = values
            shadowed = vm_keys.get(dom)[0].shadowed()
            overrides = ["%s (%s has %s)" % (k, shadowed[k][0][0], json.dumps(shadowed[k][0][1]))
                         for k in sorted(values) if k in shadowed]
            if overrides:
                note = "; overrides %s: `vm unset` hands them back" % ", ".join(overrides)
        elif args.action == "unset":
            done = vm_keys.unset_keys(dom, keys)
            report["keys"] = keys
        elif args.action == "policy":
            policy = None if args.policy == "default" else args.policy
            done = vm_keys.set_policy(dom, policy)
            report["policy"] = policy
            note = "; policy %s" % (policy or "removed (the host's default_policy applies)")
        elif args.action == "link":
            done = vm_keys.link(dom, link)
            report["link"] = link.describe()
            note = "; linked to %s (hostkvd reads it and stores its keys)" % link.describe()
        else:
            done = vm_keys.unlink(dom, "cobbler", keep_keys=args.keep_keys)
            note = "; unlinked from Cobbler%s" % (", its keys kept as local keys" if args.keep_keys else "")
        dropped = []
        for _view, problems in done:
            _warn(problems, err)
            dropped.extend(problems)
        report["views"] = [view for view, _p in done]
        report["dropped"] = dropped
        _report(args, out, report, "%s: %s (%s)%s" % (
            dom.name(), args.action, ", ".join(view for view, _p in done) or "no views", note))
        return EXIT_OK
    except domain_xml.DomainXMLError as exc:
        raise Failure(EXIT_USAGE, str(exc))
    except KeyError as exc:
        raise Failure(EXIT_FAILED, exc.args[0])
    except entries.EntryError as exc:
        raise Failure(EXIT_USAGE, str(exc))
    except libvirt.libvirtError as exc:
        raise Failure(EXIT_FAILED, "libvirt: %s" % exc.get_error_message())
    finally:
        conn.close()


def _link_from_args(args):
    attrs = {}
    if args.cobbler_server:
        from hostkv.hostkvd.keysources.cobbler import normalize_server
        try:
            attrs["server"] = normalize_server(args.cobbler_server)
        except ValueError as exc:
            raise Failure(EXIT_USAGE, "--cobbler-server: %s" % exc)
    if args.cobbler_system:
        attrs["system"] = args.cobbler_system
    else:
        attrs["profile"] = args.cobbler_profile
    link = domain_xml.SourceLink("cobbler", attrs)
    try:
        domain_xml.check_metadata(domain_xml.HostkvMetadata(sources=[link]))
    except domain_xml.DomainXMLError as exc:
        raise Failure(EXIT_USAGE, str(exc))
    return link


def write_vm_get(out, name, meta, as_json):
    """``vm get``: every served key with its value (JSON-quoted: one line each, always) and where it
    comes from, then the policy and the links; ``--json`` the same as one object."""
    values, origins = meta.effective()
    shadowed = meta.shadowed()
    links = dict((link.type, dict(link.attrs, keys=link.values)) for link in meta.sources)
    if as_json:
        out.write(json.dumps({"domain": name, "values": values, "origins": origins, "policy": meta.policy,
                              "links": links, "shadowed": dict((k, [list(s) for s in v])
                                                               for k, v in shadowed.items())},
                             indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        return
    for key in sorted(values):
        origin = origins[key]
        link = meta.source(origin)
        where = link.describe() if link is not None else origin
        if key in shadowed:
            where += " (overrides %s)" % ", ".join("%s %s" % (s, json.dumps(v, ensure_ascii=False))
                                                   for s, v in shadowed[key])
        out.write("%s = %s  %s\n" % (key, json.dumps(values[key], ensure_ascii=False), where))
    out.write("policy: %s\n" % (meta.policy or "(host default)"))
    for link in meta.sources:
        try:
            fetched = ", keys read at Cobbler mtime %s" % _when(float(link.attrs["fetched"]))
        except (KeyError, ValueError):
            fetched = "" if link.values else " (no keys read yet)"
        out.write("linked: %s%s\n" % (link.describe(), fetched))


def _check_deliverable(args, dom, values, err):
    """Refuse (exit 1, nothing written) vm.* keys that, with hostkvd's host.* keys, would make this
    guest's snapshot break a protocol limit: hostkvd is asked (op check-vm) before anything is
    written.  Without a running hostkvd there is nothing to check against (a warning says so)."""
    merged = {}
    for _view, flags in vm_keys.views(dom):
        current, _problems = vm_keys.read(dom, flags)
        current.update(values)
        if len(current) > len(merged):
            merged = current
    try:
        reply = control_client.request(args.control_socket, {
            "op": "check-vm", "key": dom.UUIDString(), "label": dom.name(), "values": merged})
    except control_client.DaemonUnreachable as exc:
        err.write("hostkvctl: warning: limits not checked against the host's keys: %s\n" % exc)
        return
    if not reply.get("ok"):
        raise Failure(EXIT_FAILED, "hostkvd: %s" % reply.get("error", "refused"))


def _describe(view_results, verb):
    parts = []
    for item in view_results:
        view, kinds = item[0], item[1]
        pending = len(item) > 2 and item[2]
        parts.append("%s: %s%s" % (view, "+".join(kinds) if kinds else "nothing to do",
                                   " (unplug pending: the guest has not acknowledged yet)" if pending else ""))
    return "; ".join(parts) if parts else "no live or persistent definition"


def cmd_enable(args, out, err):
    import libvirt
    if bool(args.domains) == bool(args.all):
        raise Failure(EXIT_USAGE, "%s: give DOMAIN... or --all (not both)" % args.command)
    conn = _open(args)
    code = EXIT_OK
    results = []
    try:
        doms = libvirt_conn.all_domains(conn) if args.all else [_domain(args, conn, d) for d in args.domains]
        for dom in doms:
            try:
                if args.command == "enable":
                    done = enable_mod.enable(dom, args.port_name, next_boot=args.next_boot)
                    state = "already enabled" if not any(k for _v, k in done) else "enabled"
                    if dom.isActive() and not dom.isPersistent():
                        state += " (transient domain: live only)"
                    elif args.next_boot and dom.isActive() and state == "enabled":
                        state += " for the next boot"
                else:
                    done = enable_mod.disable(dom, args.port_name)
                    state = "disabled" if any(k for _v, k, _p in done) else "was not enabled"
                results.append({"domain": dom.name(), "ok": True, "state": state,
                                "views": {item[0]: list(item[1]) for item in done}})
                if not args.json:
                    out.write("%s: %s (%s)\n" % (dom.name(), state, _describe(done, args.command)))
            except enable_mod.CannotChange as exc:
                err.write("hostkvctl: %s\n" % exc)
                results.append({"domain": dom.name(), "ok": False, "error": str(exc)})
                code = EXIT_FAILED
            except libvirt.libvirtError as exc:
                err.write("hostkvctl: %s: libvirt: %s\n" % (dom.name(), exc.get_error_message()))
                results.append({"domain": dom.name(), "ok": False, "error": exc.get_error_message()})
                code = EXIT_FAILED
    finally:
        conn.close()
    if args.json:
        _report(args, out, {"ok": code == EXIT_OK, "command": args.command, "domains": results}, None)
    return code


def main(argv=None, out=None, err=None):
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)   # usage errors exit 2
    args.connect = paths.libvirt_uri(args.connect)
    try:
        if os.geteuid() != 0:
            raise Failure(EXIT_NOT_ROOT, "hostkvctl must run as root")
        if args.command == "status":
            return cmd_status(args, out)
        if args.command == "host":
            return cmd_host(args, out)
        if args.command == "vm":
            return cmd_vm(args, out, err)
        if args.command == "reload":
            return cmd_reload(args, out)
        if args.command == "check":
            return cmd_check(args, out)
        return cmd_enable(args, out, err)
    except Failure as exc:
        err.write("hostkvctl: %s\n" % exc)
        if getattr(args, "json", False):
            _report(args, out, {"ok": False, "error": str(exc), "exit": exc.code}, None)
        return exc.code
