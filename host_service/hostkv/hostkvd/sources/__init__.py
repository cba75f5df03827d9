"""Where hostkvd's channels come from.

A source is an object with ``async def run(self, daemon)`` that runs until cancelled and calls
``daemon.add_channel`` / ``daemon.remove_channel`` / ``daemon.set_vm_values`` (and optionally
``daemon.set_host_id``).  explicit: sockets named on the command line (plain QEMU);
libvirt_source: every libvirt domain that has the hostkv channel.
"""
