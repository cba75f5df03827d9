"""``hostkv``: read the host's key/value data inside the guest.

Reads the files the agent publishes (``get``, ``list``, ``env``) or asks the agent over
its control socket (``get --live``, ``watch``, ``status``).  Exit codes are part of the
interface (see EXIT_* below, ``hostkv --help`` and docs/AGENT.md).
"""

import argparse
import json
import os
import socket
import sys
import time

from hostkv import protocol
from hostkv.agent import VERSION, client, config
from hostkv.agent.publish import NoData, read_current
from hostkv.common import paths

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_DATA = 3
EXIT_TIMEOUT = 4
EXIT_STALE = 5

EPILOG = """exit codes:
  0  ok
  1  key not found (watch: the key was removed)
  2  usage error (bad option, invalid key name)
  3  no data yet, or the agent is not reachable (status: agent down or nothing published)
  4  watch timed out without a change
  5  the data is stale (cached, host not connected, or agent not running) and --fresh was given

watch prints the new seq token on its first line, then the value (KEY given) or the list;
pass that token as --since to the next call so that no change between calls is missed:
  out=$(hostkv watch host.hostname --since "$seq") && seq=${out%%
*} && value=${out#*
}

environment: HOSTKV_RUN_DIR (default /run/hostkv), HOSTKV_SOCKET (default RUN_DIR/agent.sock)
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


def _err(message):
    sys.stderr.write("hostkv: %s\n" % message)


def _format_value(value):
    """A value for one ``key=value`` line: raw, or a JSON string if it would be ambiguous."""
    if value.startswith('"') or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return json.dumps(value, ensure_ascii=False)
    return value


def _check_key(key):
    try:
        return protocol.validate_key(key)
    except protocol.ProtocolError as err:
        raise CliError(EXIT_USAGE, str(err))


def _published(args):
    try:
        doc = read_current(args.run_dir)
    except NoData as err:
        raise CliError(EXIT_NO_DATA, "no data: %s" % err)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), dict):
        raise CliError(EXIT_NO_DATA, "no data: values.json in %s is malformed" % args.run_dir)
    return doc


def _ask(args, req, timeout):
    try:
        return client.request(args.socket, req, timeout)
    except client.AgentUnreachable as err:
        raise CliError(EXIT_NO_DATA, "agent not reachable: %s" % err)
    except socket.timeout:
        raise CliError(EXIT_NO_DATA, "the agent did not answer within %s s" % timeout)


def _is_fresh(doc):
    return not doc.get("stale", True) and doc.get("connected", False)


def _agent_says_connected(args):
    """True/False from the agent's live status; None when the caller may not ask (socket 0600).

    The files alone cannot tell that the agent was killed (kill -9 leaves "connected": true):
    a dead agent (no socket, connection refused) counts as not connected.
    """
    if not os.path.exists(args.socket):
        return False
    try:
        reply = client.request(args.socket, {"op": "status"}, 5.0)
    except client.AgentUnreachable as err:
        return None if "root-only" in str(err) else False
    except socket.timeout:
        return False
    return bool(reply.get("connected")) and bool(reply.get("in_sync", True))


def _check_fresh(args, doc):
    if not _is_fresh(doc):
        raise CliError(EXIT_STALE, "data is stale (%s)" % (
            "host not connected" if not doc.get("connected") else "not yet confirmed by the host"))
    if _agent_says_connected(args) is False:
        raise CliError(EXIT_STALE, "data is stale (the agent is not running or the host is away)")


# ------------------------------------------------------------------ commands

def cmd_get(args):
    key = _check_key(args.key)
    if args.live:
        reply = _ask(args, {"op": "get", "key": key, "live": True, "timeout": args.timeout},
                     args.timeout + 5)
        if not reply.get("ok"):
            code = reply.get("error")
            if code == "not-found":
                raise CliError(EXIT_NOT_FOUND, "key not found: %s" % key)
            if code in ("bad-key", "bad-request"):
                raise CliError(EXIT_USAGE, reply.get("message", code))
            raise CliError(EXIT_NO_DATA, "live get failed: %s: %s" % (code, reply.get("message", "")))
        _out(reply["value"])
        if args.verbose:
            _err("round trip %.3f ms via the agent" % (reply.get("rtt", 0) * 1000))
        return EXIT_OK
    doc = _published(args)
    if args.fresh:
        _check_fresh(args, doc)
    values = doc["values"]
    if key not in values:
        raise CliError(EXIT_NOT_FOUND, "key not found: %s" % key)
    _out(values[key])
    return EXIT_OK


def cmd_list(args):
    doc = _published(args)
    if args.fresh:
        _check_fresh(args, doc)
    if args.json:
        _out(json.dumps(doc, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
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
        raise CliError(EXIT_NO_DATA, "no data: cannot read %s: %s" % (doc_dir, err.strerror))
    _out(data)
    return EXIT_OK


# passed through from the agent's status reply as they are (docs/AGENT.md, control socket)
_AGENT_STATUS_FIELDS = ("in_sync", "link", "link_since", "link_since_monotonic", "version", "modules",
                        "timings")


def cmd_status(args):
    agent = None
    agent_error = None
    try:
        agent = client.request(args.socket, {"op": "status"}, 5.0)
    except (client.AgentUnreachable, socket.timeout) as err:
        agent_error = str(err) or "timed out"
    doc = None
    try:
        doc = read_current(args.run_dir)
    except NoData:
        pass
    now = time.time()
    info = {"agent": "running" if agent else "not reachable",
            "agent_error": agent_error,
            "state": agent.get("state") if agent else None,
            "pid": agent.get("pid") if agent else None,
            "port": agent.get("port") if agent else None,
            "published": doc is not None}
    if doc is not None:
        received = doc.get("received_at")
        info.update(connected=bool(doc.get("connected")), stale=bool(doc.get("stale", True)),
                    host_id=doc.get("host_id"), generation=doc.get("generation"), seq=doc.get("seq"),
                    received_at=received, keys=len(doc.get("values") or {}),
                    age=(now - received) if isinstance(received, (int, float)) else None)
    if agent is not None:      # the agent's view of the channel is the live one
        info["connected"] = bool(agent.get("connected"))
        info.setdefault("seq", agent.get("seq"))
        for field in _AGENT_STATUS_FIELDS:
            if field in agent:
                info[field] = agent[field]
    code = EXIT_OK if (agent is not None and doc is not None) else EXIT_NO_DATA
    if args.json:
        _out(json.dumps(info, ensure_ascii=False, sort_keys=True, indent=1) + "\n")
        return code
    lines = ["agent:      %s" % (("running (pid %s)" % info["pid"]) if agent else
                                  "not reachable (%s)" % agent_error)]
    if agent:
        lines.append("channel:    %s%s" % (info["state"], (" on %s" % info["port"]) if info["port"] else ""))
    if doc is None:
        lines.append("data:       none published in %s" % args.run_dir)
    else:
        lines += ["host_id:    %s" % _format_value(str(info["host_id"])),
                  "generation: %s" % info["generation"],
                  "seq:        %s" % info["seq"],
                  "keys:       %d" % info["keys"],
                  "age:        %s" % ("%.1f s" % info["age"] if info["age"] is not None else "?"),
                  "stale:      %s" % ("yes" if info["stale"] else "no"),
                  "connected:  %s" % ("yes" if info.get("connected") else "no")]
    _out("\n".join(lines) + "\n")
    return code


def cmd_watch(args):
    key = _check_key(args.key) if args.key is not None else None
    since = args.since
    if since is None:
        # the current seq, fixed now: if the agent restarts during the wait, the re-asked
        # watch still covers every change since this call began
        since = _ask(args, {"op": "status"}, 5.0).get("seq", 0)
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
            reply = client.request(args.socket, req,
                                   None if deadline is None else req["timeout"] + 10)
        except (client.AgentUnreachable, socket.timeout) as err:
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
    if args.json:
        out = {"seq": seq, "since": since}
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
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("list", help="print all keys and values", formatter_class=config.formatter,
                       epilog="Lines are KEY=VALUE; a value that contains control characters or starts "
                              "with a double quote is printed as a JSON string.")
    p.add_argument("--json", action="store_true", help="print values.json (values and status)")
    p.add_argument("--fresh", action="store_true", help="fail (exit 5) if the data is stale")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("status", help="agent, channel and data status", formatter_class=config.formatter)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="wait for a change; print the new seq token and the value(s)",
                       formatter_class=config.formatter, epilog=EPILOG)
    p.add_argument("key", metavar="KEY", nargs="?", help="watch only this key")
    p.add_argument("--since", type=_seq, default=None,
                   help="seq token from an earlier call (default: the current seq, i.e. the next change)")
    p.add_argument("--timeout", type=_seconds, default=None, help="give up after S seconds (exit 4)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
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
