"""hostkv.common: the rules several hostkv components share, in one place.

Standard library only, Python 3.6+, no I/O at import time.  This package is shipped whole beside
``hostkv/protocol.py`` into every piece of hostkv (the agent RPM, the host RPM and through it
hostkv-koan, and the Cobbler plugin's private ``_lib/common`` copy), so every piece enforces the
same rule with the same words.  Its modules import only each other, relatively, so the package
works wherever it is copied to.

One module per noun; each states its contract at its top:

  entries     what a key and a value may be (scopes, syntax, sizes, the value character rule),
              ``validate_entry(key, value)``, bare-key scoping ``scoped_key(name, scope)``
  options     the Cobbler ``autoinstall_meta`` options (``hostkv_enabled``, ``hostkv_vm_<name>``,
              ...) and the ONE set of boolean words; the kickstart snippet's word list is
              generated from here
  atomic      ``write_atomic(path, data)``: the one atomic (and durable) file replacement
  domain_xml  libvirt domain XML as hostkv reads and writes it (channels, metadata, enable plans)
  version     ``VERSION``, tied to the checkout's VERSION file
  paths       the port name, sockets, config and state paths every component defaults to

Import a module, never this package's namespace: ``from hostkv.common import entries``.
"""
