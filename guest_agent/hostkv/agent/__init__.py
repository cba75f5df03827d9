"""hostkv-agent: the guest side of hostkv (Python 3.6+ standard library only).

Modules, one job each:
  port      find and open the virtio-serial port, report connect/disconnect/unplug
  envfile   render the shell-sourceable env file
  model     the published record and the per-key change history behind ``watch``
  publish   atomic publication of the run dir (/run/hostkv) and reading it back
  cache     the persistent cache (/var/lib/hostkv/snapshot.json)
  hooks     run /etc/hostkv/hooks.d/* after publications, in a background thread
  control   the local control socket (/run/hostkv/agent.sock) server side
  client    the control socket client side (used by the CLI)
  config    defaults, environment variables and command-line flags for the daemon
  daemon    the poll loop that ties everything together
  cli       the ``hostkv`` command
"""

from hostkv.common.version import VERSION  # noqa: F401 - the one version source
