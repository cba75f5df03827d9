"""A synchronous QMP connection to one QEMU, over qemu.qmp's asyncio client.

Contract: ``QmpConnection(socket_path, timeout=30)`` connects (raises qemu.qmp's errors if it
cannot); ``cmd(name, **args)`` executes a command and returns its ``return`` value (qemu.qmp's
ExecuteError on failure; a name with '-' in an argument: pass ``**{'x-y': 1}``); ``events`` is
every event received so far, each a dict with an extra ``"t"`` (time.monotonic() on receipt);
``close()`` disconnects and stops the private event-loop thread (idempotent).  Safe to use from
code that runs its own asyncio loop.
"""

import asyncio
import os
import threading
import time


class QmpConnection(object):
    """Synchronous QMP over qemu.qmp's asyncio QMPClient, on a private event loop thread.

    Safe to use from code that runs its own asyncio loop.  ``events`` collects every event
    as a dict with an extra ``"t"`` (time.monotonic() when received).
    """

    def __init__(self, path, timeout=30):
        from qemu.qmp import QMPClient
        self.timeout = timeout
        self.events = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qmp-" + path,
                                        daemon=True)
        self._thread.start()

        async def make():
            return QMPClient(os.path.basename(path))
        self._client = self._call(make())
        try:
            self._call(self._client.connect(path))
        except BaseException:
            self._stop_loop()
            raise
        self._pump = asyncio.run_coroutine_threadsafe(self._collect(), self._loop)
        self._pump.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _collect(self):
        async for ev in self._client.events:
            rec = dict(ev)
            rec["t"] = time.monotonic()
            self.events.append(rec)

    def _call(self, coro, timeout=None):
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout or self.timeout)
        except BaseException:
            fut.cancel()
            raise

    def cmd(self, _name, _timeout=None, **args):
        """Execute QMP command ``_name`` (arguments as keywords; for names with '-' pass a dict:
        ``**{'x-y': 1}``) and return its ``return`` value; raises qemu.qmp's ExecuteError."""
        return self._call(self._client.execute(_name, args or None), _timeout)

    def close(self):
        if self._loop.is_closed():
            return
        self._pump.cancel()
        try:
            self._call(self._client.disconnect(), 5)
        except Exception:
            pass
        self._stop_loop()

    def _stop_loop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()
