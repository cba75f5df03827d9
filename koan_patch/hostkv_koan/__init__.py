"""hostkv-koan: teaches a stock koan 3.0.1 the hostkv channel, and fixes it for Cobbler 3.3.

One module per concern:

  meta       hostkv settings from a Cobbler object's blended autoinstall_meta (pure, validated)
  fixes      the four koan 3.0.1 / Cobbler 3.3 fixes, as wrappers around koan's own functions
  channel    the hostkv part: virt-install argv addition, per-guest keys into domain metadata
  hook       the import hook: wraps koan's functions when (and only when) koan is imported
  installer  install / uninstall / status of the one ``.pth`` file in koan's site-packages
  cli        ``hostkv-koan install|uninstall|status``

Nothing of koan is copied or edited: the extension is one ``hostkv_koan.pth`` file next to koan's
package which, at interpreter start, registers an import hook; the hook wraps koan's functions
right after koan's own modules are executed.  ``hostkv-koan uninstall`` removes that file and
koan is exactly as shipped again.
"""

# hostkv's version is hostkv.common.version.VERSION (installer.version()): this package is imported
# at every interpreter start (from the .pth), where hostkv's libraries are not on sys.path yet.

# koan versions whose internals the wrappers were written (and tested) against.
SUPPORTED_KOAN_VERSIONS = ("3.0.1",)

# Environment variable naming pieces to leave OFF (comma separated), for diagnosis and tests:
# autoinstall, port, filesize, bridge (the four fixes) and hostkv (channel + keys).
DISABLE_ENV = "HOSTKV_KOAN_DISABLE"
PIECES = ("autoinstall", "port", "filesize", "bridge", "hostkv")
