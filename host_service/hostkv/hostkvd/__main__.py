"""``hostkvd``: serve hostkv snapshots to guests.

    hostkvd [--config /etc/hostkv/hostkvd.conf] [--channel PATH]... [--channel-dir DIR]
            [--connect URI] [--port-name org.hostkv.0] [--control-socket PATH] [--host-id ID]

With --channel/--channel-dir it serves exactly those sockets (plain QEMU); otherwise it follows
libvirt (--connect, else $LIBVIRT_DEFAULT_URI, else qemu:///system: hostkvctl's rule) and serves
every domain that has the hostkv channel.
SIGHUP reloads the config and pushes changes; SIGTERM/SIGINT stop.  Exit status: 0 on a clean
stop, 1 on a bad config or option (the message names the file and line).
"""

import argparse
import asyncio
import logging
import os
import signal
import sys

from hostkv import protocol
from hostkv.common import paths, sd_notify
from hostkv.hostkvd import VERSION, config, control
from hostkv.hostkvd.daemon import Hostkvd
from hostkv.hostkvd.sources.explicit import ExplicitSource

log = logging.getLogger("hostkvd")


class JournalFormatter(logging.Formatter):
    """``<prio>message`` under systemd (journald reads the priority), ``LEVEL name: message`` else."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal):
        logging.Formatter.__init__(self)
        self.journal = journal

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.journal:
            return "<%d>%s" % (self.PRIORITY.get(record.levelno, 6), message)
        return "%s %s: %s" % (record.levelname, record.name, message)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="hostkvd", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=os.environ.get("HOSTKVD_CONFIG", config.DEFAULT_PATH))
    p.add_argument("--channel", action="append", default=[], metavar="PATH",
                   help="a guest channel socket to serve (repeatable; disables libvirt mode)")
    p.add_argument("--channel-dir", action="append", default=[], metavar="DIR",
                   help="serve every socket in DIR (rescanned; disables libvirt mode)")
    p.add_argument("--connect", default=None, metavar="URI",
                   help="libvirt URI (default $LIBVIRT_DEFAULT_URI, else %s)" % paths.LIBVIRT_URI)
    p.add_argument("--port-name", default=protocol.DEFAULT_PORT_NAME)
    p.add_argument("--control-socket", default=control.DEFAULT_PATH)
    p.add_argument("--host-id", default=None)
    p.add_argument("--state-dir", default=os.environ.get("STATE_DIRECTORY") or None, metavar="DIR",
                   help="cache libvirt's host id here (default $STATE_DIRECTORY, set by systemd's "
                        "StateDirectory=; none: no cache)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--version", action="version", version="hostkvd %s" % VERSION)
    return p.parse_args(argv)


def make_source(args, daemon=None):
    """The channel source: explicit sockets, or libvirt discovery (which also gives ``daemon`` the
    metadata writer key sources store guests' keys with)."""
    if args.channel or args.channel_dir:
        return ExplicitSource(args.channel, args.channel_dir)
    from hostkv.hostkvd.sources.libvirt_source import LibvirtSource  # needs libvirt-python
    uri = paths.libvirt_uri(args.connect)
    if daemon is not None:
        from hostkv.hostkvd.metadata_writer import MetadataWriter
        daemon.metadata_writer = MetadataWriter(uri)
    return LibvirtSource(uri, port_name=args.port_name,
                         set_host_id=not args.host_id, state_dir=args.state_dir)


async def serve(args):
    daemon = Hostkvd(args.config, host_id=args.host_id)
    source = make_source(args, daemon)
    daemon.start_keysources()      # before the first guest: cached host keys are in its first snapshot
    ctl = control.ControlServer(daemon, args.control_socket)
    await ctl.start()
    loop = asyncio.get_event_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, daemon.reload_config)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    source_task = asyncio.ensure_future(source.run(daemon))
    log.info("hostkvd %s started: host_id %s, %d host key(s), source %s", VERSION, daemon.host_id,
             len(daemon.host_values), type(source).__name__)
    # Type=notify: ready once the control socket answers (hostkvctl works from here on)
    sd_notify.notify("READY=1", "STATUS=" + daemon.status_line())
    stop_task = asyncio.ensure_future(stop.wait())
    await asyncio.wait([source_task, stop_task], return_when=asyncio.FIRST_COMPLETED)
    sd_notify.notify("STOPPING=1")
    failed = source_task.done() and not source_task.cancelled() and source_task.exception()
    source_task.cancel()
    stop_task.cancel()
    await asyncio.gather(source_task, return_exceptions=True)   # let the source clean up (libvirt)
    await ctl.close()
    await daemon.close()
    if failed:
        log.error("channel source failed: %s", failed)
        return 1
    log.info("stopped")
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(serve(args))
    except config.ConfigError as err:
        log.error("%s", err)
        return 1
    except protocol.ProtocolError as err:
        log.error("bad configuration: %s", err)
        return 1
    finally:
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
