"""Names and paths that several components must agree on (their built-in defaults).

Every one of them can be overridden where it is used (command-line flags, environment variables,
config); these are only the defaults, stated once.

  PORT_NAME               the virtio-serial port (libvirt channel target name) hostkv uses
  LIBVIRT_URI             the libvirt connection hostkvd, hostkvctl and hostkv-koan use by default
                          (:func:`libvirt_uri`: --connect, else $LIBVIRT_DEFAULT_URI, else this)
  HOSTKVD_CONFIG          hostkvd's config file (hostkvctl edits it through hostkvd)
  HOSTKVD_CONTROL_SOCKET  hostkvd's root-only control socket (hostkvctl connects to it)
  HOSTKVD_STATE_DIR       hostkvd's state (the unit's StateDirectory=hostkv), e.g. its Cobbler cache
  AGENT_RUN_DIR           where the guest agent publishes values.json, keys/, env
  AGENT_SOCKET_NAME       the agent's control socket, inside AGENT_RUN_DIR
  AGENT_STATE_DIR         the agent's persistent cache directory
  AGENT_HOOKS_DIR         executables the agent runs after each change
  COBBLER_CONFIG          the Cobbler plugin's config file
"""

import os

PORT_NAME = "org.hostkv.0"
LIBVIRT_URI = "qemu:///system"


def libvirt_uri(explicit=None, environ=None):
    """The libvirt URI to use: ``explicit`` (a --connect flag), else ``$LIBVIRT_DEFAULT_URI`` (as
    virsh honours it), else LIBVIRT_URI.  The one rule hostkvd and hostkvctl share."""
    env = os.environ if environ is None else environ
    return explicit or env.get("LIBVIRT_DEFAULT_URI") or LIBVIRT_URI

HOSTKVD_CONFIG = "/etc/hostkv/hostkvd.conf"
HOSTKVD_CONTROL_SOCKET = "/run/hostkv/hostkvd.sock"
HOSTKVD_STATE_DIR = "/var/lib/hostkv"

AGENT_RUN_DIR = "/run/hostkv"
AGENT_SOCKET_NAME = "agent.sock"
AGENT_SOCKET = os.path.join(AGENT_RUN_DIR, AGENT_SOCKET_NAME)
AGENT_STATE_DIR = "/var/lib/hostkv"
AGENT_HOOKS_DIR = "/etc/hostkv/hooks.d"

COBBLER_CONFIG = "/etc/hostkv/cobbler.conf"
