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

from hostkv.common import entries, paths
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
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("status", help="what hostkvd serves")
    s.add_argument("--json", action="store_true")

    h = sub.add_parser("host", help="host.* keys (hostkvd's config)")
    hs = h.add_subparsers(dest="action", metavar="ACTION")
    hs.required = True
    hs.add_parser("set", help="set KEY=VALUE...").add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    hs.add_parser("unset", help="remove KEY...").add_argument("keys", nargs="+", metavar="KEY")

    v = sub.add_parser("vm", help="vm.* keys of a domain (libvirt metadata)")
    vs = v.add_subparsers(dest="action", metavar="ACTION")
    vs.required = True
    g = vs.add_parser("get", help="show DOMAIN's keys")
    g.add_argument("domain")
    g.add_argument("--json", action="store_true")
    g.add_argument("--config", action="store_true", help="the persistent definition, not the live domain")
    vset = vs.add_parser("set", help="set DOMAIN KEY=VALUE...")
    vset.add_argument("domain")
    vset.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    vun = vs.add_parser("unset", help="remove DOMAIN KEY...")
    vun.add_argument("domain")
    vun.add_argument("keys", nargs="+", metavar="KEY")

    for name, text in (("enable", "hot-plug and persist the hostkv channel"),
                       ("disable", "remove what enable added")):
        e = sub.add_parser(name, help=text)
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


def cmd_status(args, out):
    status = _control(args, {"op": "status"})["status"]
    if args.json:
        out.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        return EXIT_OK
    out.write("%s  pid %s  host_id %s\nconfig %s\n" % (status.get("server"), status.get("pid"),
                                                      status.get("host_id"), status.get("config")))
    out.write("host values:\n")
    for key, value in sorted(status.get("host_values", {}).items()):
        out.write("  %s = %s\n" % (key, json.dumps(value, ensure_ascii=False)))
    channels = status.get("channels", [])
    out.write("channels: %d\n" % len(channels))
    for ch in sorted(channels, key=lambda c: str(c.get("label"))):
        out.write("  %-20s %-10s gen %-14s pushes %-4s connects %-3s %s\n" % (
            ch.get("label"), ch.get("state"), ch.get("generation"), ch.get("pushes"), ch.get("connects"),
            ch.get("path")))
    return EXIT_OK


def cmd_host(args, out):
    if args.action == "set":
        reply = _control(args, {"op": "host-set", "values": parse_assignments(args.assignments, "host")})
    else:
        keys = [scoped_key(k, "host") for k in args.keys]
        reply = _control(args, {"op": "host-unset", "keys": keys})
    out.write("%s\n" % reply.get("message", "ok"))
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
    conn = _open(args)
    try:
        dom = _domain(args, conn, args.domain)
        if args.action == "get":
            values, problems = vm_keys.get(dom, config=args.config)
            _warn(problems, err)
            if args.json:
                out.write(json.dumps(values, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
            else:
                for key in sorted(values):
                    out.write("%s=%s\n" % (key, values[key]))
            return EXIT_OK
        if args.action == "set":
            done = vm_keys.set_keys(dom, values)
        else:
            done = vm_keys.unset_keys(dom, keys)
        for _view, problems in done:
            _warn(problems, err)
        out.write("%s: %s (%s)\n" % (dom.name(), "set" if args.action == "set" else "unset",
                                     ", ".join(view for view, _p in done) or "no views"))
        return EXIT_OK
    except KeyError as exc:
        raise Failure(EXIT_FAILED, exc.args[0])
    except entries.EntryError as exc:
        raise Failure(EXIT_USAGE, str(exc))
    except libvirt.libvirtError as exc:
        raise Failure(EXIT_FAILED, "libvirt: %s" % exc.get_error_message())
    finally:
        conn.close()


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
                out.write("%s: %s (%s)\n" % (dom.name(), state, _describe(done, args.command)))
            except enable_mod.CannotChange as exc:
                err.write("hostkvctl: %s\n" % exc)
                code = EXIT_FAILED
            except libvirt.libvirtError as exc:
                err.write("hostkvctl: %s: libvirt: %s\n" % (dom.name(), exc.get_error_message()))
                code = EXIT_FAILED
    finally:
        conn.close()
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
        return cmd_enable(args, out, err)
    except Failure as exc:
        err.write("hostkvctl: %s\n" % exc)
        return exc.code
