"""Settings of the agent: built-in defaults < environment variables < command-line flags.

Every path can be moved so tests (and unusual guests) run unprivileged in temp dirs.
"""

import argparse
import os

from hostkv.agent import VERSION
from hostkv.common import paths

# (attribute, flag, environment variable, default, help)
PATH_SETTINGS = (
    ("port_name", "--port-name", "HOSTKV_PORT_NAME", paths.PORT_NAME,
     "virtio-serial port name to look for"),
    ("device", "--device", "HOSTKV_DEVICE", None,
     "open exactly this device node instead of looking the port up by name"),
    ("dev_dir", "--dev-dir", "HOSTKV_DEV_DIR", "/dev", "where device nodes live"),
    ("sysfs_dir", "--sysfs-dir", "HOSTKV_SYSFS_DIR", "/sys/class/virtio-ports",
     "sysfs class directory scanned for the port name"),
    ("run_dir", "--run-dir", "HOSTKV_RUN_DIR", paths.AGENT_RUN_DIR, "where values are published"),
    ("state_dir", "--state-dir", "HOSTKV_STATE_DIR", paths.AGENT_STATE_DIR, "where the cache lives"),
    ("hooks_dir", "--hooks-dir", "HOSTKV_HOOKS_DIR", paths.AGENT_HOOKS_DIR,
     "executables run after each change"),
    ("socket", "--socket", "HOSTKV_SOCKET", None, "control socket (default: RUN_DIR/agent.sock)"),
)

SOCKET_NAME = paths.AGENT_SOCKET_NAME


class Config(object):
    """Plain settings object; build one with :func:`parse_args` or directly in tests."""

    def __init__(self, **kw):
        for attr, _, _, default, _ in PATH_SETTINGS:
            setattr(self, attr, kw.pop(attr, default))
        self.hook_timeout = float(kw.pop("hook_timeout", 30.0))
        self.rescan_interval = float(kw.pop("rescan_interval", 1.0))
        self.sync_timeout = float(kw.pop("sync_timeout", 2.0))
        self.resync_interval = float(kw.pop("resync_interval", 300.0))
        self.verbose = bool(kw.pop("verbose", False))
        if kw:
            raise TypeError("unknown settings: %s" % ", ".join(sorted(kw)))
        if not self.socket:
            self.socket = os.path.join(self.run_dir, SOCKET_NAME)


def default_socket(environ=None):
    """Socket path the CLI uses: $HOSTKV_SOCKET, else $HOSTKV_RUN_DIR/agent.sock."""
    environ = os.environ if environ is None else environ
    if environ.get("HOSTKV_SOCKET"):
        return environ["HOSTKV_SOCKET"]
    return os.path.join(environ.get("HOSTKV_RUN_DIR") or paths.AGENT_RUN_DIR, SOCKET_NAME)


def _positive(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError("%r must be a positive number" % text)
    return value


def _non_negative(text):
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass
    return _positive(text)


def formatter(prog):
    """Help formatter with an explicit width: argparse would otherwise import shutil, which
    python3-minimal lacks.  $COLUMNS is honoured when it is a sane number."""
    try:
        width = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        width = 0
    return argparse.RawDescriptionHelpFormatter(prog, width=width if 40 <= width <= 500 else 90)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hostkv-agent", formatter_class=formatter,
        description="Guest agent of hostkv: reads the host's key/value data from the virtio-serial "
                    "port and publishes it in RUN_DIR (values.json, keys/, env).",
        epilog="Each path flag can also be set through the environment variable named in its help.")
    for attr, flag, env, default, text in PATH_SETTINGS:
        parser.add_argument(flag, dest=attr, metavar=attr.upper(),
                            help="%s (env %s, default %s)" % (text, env, default))
    parser.add_argument("--hook-timeout", type=_positive, default=30.0,
                        help="seconds a hook may run before it is killed (default 30)")
    parser.add_argument("--rescan-interval", type=_positive, default=1.0,
                        help="seconds between looks for a missing port (default 1)")
    parser.add_argument("--sync-timeout", type=_positive, default=2.0,
                        help="seconds without a sync reply before a new sync (default 2)")
    parser.add_argument("--resync-interval", type=_non_negative, default=300.0,
                        help="seconds between periodic re-syncs while connected, 0 = never (default 300)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug events too")
    parser.add_argument("--version", action="version", version="hostkv-agent " + VERSION)
    return parser


def parse_args(argv=None, environ=None):
    """Parse ``argv`` with ``environ`` (os.environ) filling in unset path settings."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    kw = {}
    for attr, _, env, default, _ in PATH_SETTINGS:
        value = getattr(args, attr)
        if value is None:
            value = environ.get(env) or default
        kw[attr] = value
    return Config(hook_timeout=args.hook_timeout, rescan_interval=args.rescan_interval,
                  sync_timeout=args.sync_timeout, resync_interval=args.resync_interval,
                  verbose=args.verbose, **kw)
