"""Run hostkvd's daemon core as a channel source would drive it, with vm.* keys fed from stdin.

    python tests/hardening/vmkeys_daemon.py CONTROL_SOCKET CONFIG KEY=SOCKET_PATH...

The explicit ``--channel`` source carries no vm.* keys and the libvirt source needs libvirtd; this
stands in for a source: it builds the real :class:`hostkv.hostkvd.daemon.Hostkvd` with its real
control socket, serves each SOCKET_PATH as channel KEY (real Channel objects, real unix sockets),
prints ``started``, then applies one JSON command per stdin line:

    {"key": "a", "values": {"vm.role": "web"}}   -> daemon.set_vm_values("a", values)
    {"key": "a", "path": "/new/path"}            -> daemon.add_channel("a", "/new/path")  (a move)

and answers ``ok N`` after each.  EOF on stdin stops it.
"""

import asyncio
import json
import logging
import os
import sys

from hostkv.hostkvd import control
from hostkv.hostkvd.daemon import Hostkvd


async def run(argv):
    ctl_path, conf = argv[1], argv[2]
    daemon = Hostkvd(conf, host_id="isolation-host")
    ctl = control.ControlServer(daemon, ctl_path)
    await ctl.start()
    for spec in argv[3:]:
        key, path = spec.split("=", 1)
        daemon.add_channel(key, os.path.abspath(path), vm_values={}, label=key)
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    sys.stdout.write("started\n")
    sys.stdout.flush()
    n = 0
    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line.decode("utf-8"))
        if "path" in cmd:
            daemon.add_channel(cmd["key"], cmd["path"], label=cmd["key"])
        else:
            daemon.set_vm_values(cmd["key"], cmd["values"])
        n += 1
        sys.stdout.write("ok %d\n" % n)
        sys.stdout.flush()
        await asyncio.sleep(0)
    await ctl.close()
    await daemon.close()


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run(sys.argv))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
