"""``hostkv``: read the host's key/value data inside the guest.

Reads the files the agent publishes (``get``, ``list``, ``env``) or asks the agent over
its control socket (``get --live``, ``watch``, ``status``).  Exit codes are part of the
interface (see EXIT_* below, ``hostkv --help`` and docs/AGENT.md).
"""

import argparse
import errno
import json
import os
import socket
import sys
import time

from hostkv import protocol
from hostkv.agent import VERSION, client, config, freshness, liveness
from hostkv.agent.control import READ_ONLY_NAME
from hostkv.agent.publish import NoData, read_current
from hostkv.common import paths

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_DATA = 3
EXIT_TIMEOUT = 4
EXIT_STALE = 5
EXIT_PERMISSION = 6

EPILOG = """exit codes:
  0  ok
  1  key not found (watch: the key was removed)
  2  usage error (bad option, invalid key name)
  3  no data yet, or the agent is not running / not reachable (status: agent down or nothing
     published)
  4  watch timed out without a change
  5  the data is stale and --fresh was given (see "fresh" below)
  6  permission denied (e.g. get --live as a non-root user, or a run dir an admin narrowed)

fresh: the values are current only while the agent runs (it holds RUN_DIR/agent.lock), the host
is connected and has confirmed them; status, get/list/watch --fresh and every --json output use
that one rule ("stale_reason" says why not).  Any user may run get, list, env, status and watch
(through the read-only socket RUN_DIR/agent-ro.sock); get --live needs root.

watch prints the new seq token on its first line, then the value (KEY given) or the list;
pass that token as --since to the next call so that no change between calls is missed:
  out=$(hostkv watch host.hostname --since "$seq") && seq=${out%%
*} && value=${out#*
}

environment: HOSTKV_RUN_DIR (default /run/hostkv), HOSTKV_SOCKET (default RUN_DIR/agent.sock,
then RUN_DIR/agent-ro.sock when that is not permitted)
"""


class CliError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code


def _out(data):
    """Write bytes or text to stdout exactly (no newline added)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def _out_json(obj, indent=None):
    _out(json.dumps(obj, ensure_ascii=False, sort_keys=True, indent=indent) + "\n")


def _err(message):
    sys.stderr.write("hostkv: %s\n" % message)


def _format_value(value):
    """A value for one ``key=value`` line: raw, or a JSON string if it would be ambiguous."""
    if value.startswith('"') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return json.dumps(value, ensure_ascii=False)
    return value


def format_age(seconds):
    """An age for people: "4.2 s", "3 min 12 s", "5 h 2 min", "12 d 3 h"."""
    if seconds < 0:
        return "%s in the future (the clock changed?)" % format_age(-seconds)
    if seconds < 60:
        return "%.1f s" % seconds
    s = int(seconds)
    if s < 3600:
        return "%d min %d s" % (s // 60, s % 60)
    if s < 86400:
        return "%d h %d min" % (s // 3600, s % 3600 // 60)
    return "%d d %d h" % (s // 86400, s % 86400 // 3600)


def _check_key(key):
    try:
        return protocol.validate_key(key)
    except protocol.ProtocolError as err:
        raise CliError(EXIT_USAGE, str(err))


def _published(args):
    try:
        doc = read_current(args.run_dir)
    except NoData as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            raise CliError(EXIT_PERMISSION, "permission denied: %s" % err)
        raise CliError(EXIT_NO_DATA, "no data: %s" % err)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise CliError(EXIT_NO_DATA, "no data: values.json in %s is malformed" % args.run_dir)
    return doc


def _sockets(args):
    """The sockets to try in order: the explicit one, else agent.sock then the read-only one."""
    if args.socket_given:
        return [args.socket]
    return [args.socket, os.path.join(args.run_dir, READ_ONLY_NAME)]


def _ask(args, req, timeout, sockets=None):
    """One request to the agent; a permission error is EXIT_PERMISSION, no agent EXIT_NO_DATA."""
    sockets = sockets or _sockets(args)
    for i, path in enumerate(sockets):
        try:
            reply = client.request(path, req, timeout)
        except client.AgentUnreachable as err:
            if err.errno in (errno.EACCES, errno.EPERM) and i + 1 < len(sockets):
                continue
            if err.errno in (errno.EACCES, errno.EPERM):
                raise CliError(EXIT_PERMISSION, "permission denied: %s" % err)
            raise CliError(EXIT_NO_DATA, "agent not reachable: %s" % err)
        except socket.timeout:
            raise CliError(EXIT_NO_DATA, "the agent did not answer within %s s" % timeout)
        if reply.get("error") == "not-permitted":
            raise CliError(EXIT_PERMISSION, "permission denied: %s" % reply.get("message", ""))
        args.chosen_socket = path
        return reply
    raise CliError(EXIT_NO_DATA, "agent not reachable")


def _verdict(args, doc):
    """The one freshness rule (freshness.py) applied to ``doc``."""
    return freshness.judge(doc, args.run_dir)


def _check_fresh(args, doc):
    verdict = _verdict(args, doc)
    if not verdict.fresh:
        raise CliError(EXIT_STALE, "data is stale (%s)" % verdict.reason)
    return verdict


def _doc_view(doc, verdict):
    """values.json as the CLI shows it: its status flags replaced by the verdict's."""
    view = dict(doc)
    view.update(fresh=verdict.fresh, stale=not verdict.fresh, stale_reason=verdict.reason,
                connected=bool(doc.get("connected")) and verdict.agent_running is True,
                agent_running=verdict.agent_running)
    return view


# ------------------------------------------------------------------ commands

def cmd_get(args):
    key = _check_key(args.key)
    if args.live:
        reply = _ask(args, {"op": "get", "key": key, "live": True, "timeout": args.timeout},
                     args.timeout + 5, sockets=[args.socket])
        if not reply.get("ok"):
            code = reply.get("error")
            if code == "not-found":
                raise CliError(EXIT_NOT_FOUND, "key not found: %s" % key)
            if code in ("bad-key", "bad-request"):
                raise CliError(EXIT_USAGE, reply.get("message", code))
            raise CliError(EXIT_NO_DATA, "live get failed: %s: %s" % (code, reply.get("message", "")))
        if args.json:
            _out_json({"key": key, "value": reply["value"], "live": True, "fresh": True,
                       "host_id": reply.get("host_id"), "generation": reply.get("generation"),
                       "rtt": reply.get("rtt")})
        else:
            _out(reply["value"])
        if args.verbose:
            _err("round trip %.3f ms via the agent" % (reply.get("rtt", 0) * 1000))
        return EXIT_OK
    doc = _published(args)
    verdict = _check_fresh(args, doc) if args.fresh else _verdict(args, doc)
    values = doc["values"]
    if key not in values:
        raise CliError(EXIT_NOT_FOUND, "key not found: %s" % key)
    if args.json:
        _out_json({"key": key, "value": values[key], "live": False, "fresh": verdict.fresh,
                   "stale": not verdict.fresh, "stale_reason": verdict.reason,
                   "seq": doc.get("seq"), "host_id": doc.get("host_id"),
                   "generation": doc.get("generation"), "received_at": doc.get("received_at")})
    else:
        _out(values[key])
    return EXIT_OK


def cmd_list(args):
    doc = _published(args)
    verdict = _check_fresh(args, doc) if args.fresh else _verdict(args, doc)
    if args.json:
        _out_json(_doc_view(doc, verdict), indent=1)
    else:
        _out(_list_text(doc["values"]))
    return EXIT_OK


def _list_text(values):
    return "".join("%s=%s\n" % (k, _format_value(values[k])) for k in sorted(values))


def cmd_env(args):
    try:
        doc_dir = os.path.join(args.run_dir, "env")
        with open(doc_dir, "rb") as f:
            data = f.read()
    except (IOError, OSError) as err:
        code = EXIT_PERMISSION if err.errno in (errno.EACCES, errno.EPERM) else EXIT_NO_DATA
        raise CliError(code, "no data: cannot read %s: %s" % (doc_dir, err.strerror))
    _out(data)
    return EXIT_OK


# the agent's own view that status reports under the published data's names (file: *_published)
_OVERRIDDEN = ("ok", "stale", "connected", "stale_reason")


def _when(t, now):
    if not isinstance(t, (int, float)):
        return "?"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(t))
    return "%s (%s%s)" % (stamp, format_age(now - t), " ago" if now >= t else "")


def cmd_status(args):
    agent = None
    agent_error = None
    try:
        agent = _ask(args, {"op": "status"}, 5.0)
    except CliError as err:
        agent_error = str(err)
    doc = None
    try:
        doc = read_current(args.run_dir)
    except NoData:
        pass
    running, pid = liveness.agent_running(args.run_dir)
    now = time.time()
    info = {"agent": "running" if running else ("unknown" if running is None else "not running"),
            "agent_running": running, "agent_error": agent_error,
            "pid": agent.get("pid") if agent else pid, "published": doc is not None}
    if agent is not None:
        # everything the agent reports (stats, in_sync, link, version, timings, ...)
        for field, value in agent.items():
            if field not in _OVERRIDDEN:
                info[field] = value
        info["agent_connected"] = bool(agent.get("connected"))
    if doc is not None:
        verdict = freshness.judge(doc, args.run_dir, (running, pid))
        received = doc.get("received_at")
        info.update(host_id=doc.get("host_id"), generation=doc.get("generation"), seq=doc.get("seq"),
                    received_at=received, keys=len(doc.get("values") or {}),
                    age=(now - received) if isinstance(received, (int, float)) else None,
                    stale_published=bool(doc.get("stale", True)),
                    connected_published=bool(doc.get("connected")))
    else:
        verdict = None
    # one rule (freshness.py): never "fresh" or "connected" unless the agent runs and says so
    live_connected = bool(agent.get("connected")) if agent is not None else \
        bool(doc and doc.get("connected"))
    info["connected"] = bool(running) and live_connected
    info["fresh"] = bool(verdict and verdict.fresh)
    info["stale"] = not info["fresh"]
    info["stale_reason"] = (verdict.reason if verdict else "nothing published")
    code = EXIT_OK if (running and agent is not None and doc is not None) else EXIT_NO_DATA
    if args.json:
        _out_json(info, indent=1)
        return code
    if running:
        agent_line = "running (pid %s)" % info["pid"]
        if agent is None:
            agent_line += "; not answering: %s" % agent_error
    elif running is None:
        agent_line = "unknown (%s is not readable)" % liveness.lock_path(args.run_dir)
    else:
        agent_line = "not running"
    lines = ["agent:      %s" % agent_line]
    if agent is not None:
        lines.append("channel:    %s%s" % (info.get("state"),
                                           (" on %s" % info["port"]) if info.get("port") else ""))
    lines.append("connected:  %s" % ("yes" if info["connected"] else
                                     "no" + ("" if running else " (the agent is not running)")))
    if doc is None:
        lines.append("data:       none published in %s" % args.run_dir)
    else:
        lines += ["data:       %s" % ("fresh" if info["fresh"] else "STALE: %s" % info["stale_reason"]),
                  "host_id:    %s" % _format_value(str(info["host_id"])),
                  "keys:       %d" % info["keys"],
                  "seq:        %s (generation %s)" % (info["seq"], info["generation"]),
                  "received:   %s" % _when(info["received_at"], now)]
    _out("\n".join(lines) + "\n")
    return code


def cmd_watch(args):
    key = _check_key(args.key) if args.key is not None else None
    since = args.since
    # the first request picks the socket (agent.sock, else the read-only one) and, without
    # --since, the current seq, fixed now: if the agent restarts during the wait, the re-asked
    # watch still covers every change since this call began
    try:
        seq_now = _ask(args, {"op": "status"}, 5.0).get("seq", 0)
        path = args.chosen_socket
    except CliError as err:
        if since is None or err.code != EXIT_NO_DATA:
            raise
        # a token in hand: the agent may be restarting; the loop below retries for 10 s
        seq_now, path = since, _sockets(args)[0 if os.geteuid() == 0 else -1]
    if since is None:
        since = seq_now
    deadline = None if args.timeout is None else time.time() + args.timeout
    reconnect_until = None
    while True:
        req = {"op": "watch"}
        if since is not None:
            req["since"] = since
        if key is not None:
            req["key"] = key
        if deadline is not None:
            req["timeout"] = max(0.0, deadline - time.time())
        try:
            reply = client.request(path, req, None if deadline is None else req["timeout"] + 10)
        except (client.AgentUnreachable, socket.timeout) as err:
            if getattr(err, "errno", None) in (errno.EACCES, errno.EPERM):
                raise CliError(EXIT_PERMISSION, "permission denied: %s" % err)
            # an agent restart keeps seq (it is persisted): re-ask with the same token
            now = time.time()
            if reconnect_until is None:
                reconnect_until = now + 10.0
            if now >= reconnect_until or (deadline is not None and now >= deadline):
                raise CliError(EXIT_NO_DATA, "agent not reachable: %s" % err)
            time.sleep(0.2)
            continue
        reconnect_until = None
        if since is None and isinstance(reply.get("since"), int):
            since = reply["since"]     # keep the token the agent chose if we must re-ask
        if reply.get("ok"):
            break
        code = reply.get("error")
        if code == "timeout":
            if args.json:
                _out(json.dumps({"seq": reply.get("seq", since), "timeout": True}) + "\n")
            else:
                _err("no change within %s s (seq %s)" % (args.timeout, reply.get("seq", since)))
            return EXIT_TIMEOUT
        if code == "shutdown":
            continue          # the agent is restarting: the loop reconnects
        if code in ("bad-key", "bad-request"):
            raise CliError(EXIT_USAGE, reply.get("message", code))
        raise CliError(EXIT_NO_DATA, "watch failed: %s: %s" % (code, reply.get("message", "")))
    seq = reply["seq"]
    verdict = freshness.judge(reply.get("snapshot") or {}, args.run_dir)
    if args.json:
        out = {"seq": seq, "since": since, "fresh": verdict.fresh, "stale": not verdict.fresh,
               "stale_reason": verdict.reason}
        if key is not None:
            out.update(key=key, present=reply.get("present", False), value=reply.get("value"))
        else:
            out["snapshot"] = reply.get("snapshot")
        _out(json.dumps(out, ensure_ascii=False, sort_keys=True) + "\n")
    elif key is not None:
        _out("%d\n" % seq + (reply.get("value") or ""))
    else:
        _out("%d\n" % seq + _list_text((reply.get("snapshot") or {}).get("values") or {}))
    if key is not None and not reply.get("present"):
        _err("key %s was removed (seq %d)" % (key, seq))
        return EXIT_NOT_FOUND
    if args.fresh and not verdict.fresh:
        _err("data is stale (%s) (seq %d)" % (verdict.reason, seq))
        return EXIT_STALE
    return EXIT_OK


# ------------------------------------------------------------------ parsing

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        _err(message)
        sys.exit(EXIT_USAGE)


def _seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number of seconds" % text)
    if value != value or value < 0 or value == float("inf"):
        raise argparse.ArgumentTypeError("%r must be a non-negative number of seconds" % text)
    return value


def _seq(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a seq token (a non-negative integer)" % text)
    if value < 0:
        raise argparse.ArgumentTypeError("%r is not a seq token (a non-negative integer)" % text)
    return value


def build_parser():
    parser = _Parser(prog="hostkv", formatter_class=config.formatter, epilog=EPILOG,
                     description="Read the key/value data the virtualization host gives this guest.")
    parser.add_argument("--run-dir", default=None, help="published data (env HOSTKV_RUN_DIR, "
                                                        "default /run/hostkv)")
    parser.add_argument("--socket", default=None, help="agent control socket (env HOSTKV_SOCKET, "
                                                       "default RUN_DIR/agent.sock)")
    parser.add_argument("--version", action="version", version="hostkv " + VERSION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("get", help="print one value exactly (no newline added)",
                       formatter_class=config.formatter, epilog=EPILOG)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--fresh", action="store_true", help="fail (exit 5) if the data is stale")
    p.add_argument("--live", action="store_true", help="ask the host now, through the agent")
    p.add_argument("--timeout", type=_seconds, default=5.0, help="--live: seconds to wait (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="--live: report the round trip time")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object: key, value, fresh, stale_reason, seq, host_id, ...")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("list", help="print all keys and values", formatter_class=config.formatter,
                       epilog="Lines are KEY=VALUE; a value that contains control characters or starts "
                              "with a double quote is printed as a JSON string.")
    p.add_argument("--json", action="store_true",
                   help="print values.json, its status fields replaced by the freshness verdict")
    p.add_argument("--fresh", action="store_true", help="fail (exit 5) if the data is stale")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="agent, channel and data status (exit 3: agent down or no data)",
                       formatter_class=config.formatter, epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="wait for a change; print the new seq token and the value(s)",
                       formatter_class=config.formatter, epilog=EPILOG)
    p.add_argument("key", metavar="KEY", nargs="?", help="watch only this key")
    p.add_argument("--since", type=_seq, default=None,
                   help="seq token from an earlier call (default: the current seq, i.e. the next change)")
    p.add_argument("--timeout", type=_seconds, default=None, help="give up after S seconds (exit 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object (with fresh, stale_reason)")
    p.add_argument("--fresh", action="store_true",
                   help="after printing, exit 5 if the new data is stale (the token stays usable)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("env", help="print the shell-sourceable env file", formatter_class=config.formatter)
    p.set_defaults(func=cmd_env)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        _err("a command is required (get, list, status, watch, env)")
        return EXIT_USAGE
    if args.run_dir is None:
        args.run_dir = os.environ.get("HOSTKV_RUN_DIR") or paths.AGENT_RUN_DIR
    args.socket_given = bool(args.socket or os.environ.get("HOSTKV_SOCKET"))
    args.chosen_socket = None
    if args.socket is None:
        args.socket = os.environ.get("HOSTKV_SOCKET") or os.path.join(args.run_dir, config.SOCKET_NAME)
    try:
        return args.func(args)
    except CliError as err:
        _err(str(err))
        return err.code
    except BrokenPipeError:
        try:
            sys.stdout = None
        except Exception:
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
