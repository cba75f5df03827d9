"""hostkvctl: the host administrator's command line for hostkv (root only).

  hostkvctl [--connect URI] [--control-socket PATH] [--port-name NAME] COMMAND ...

  status [--json]                      what hostkvd serves (via its control socket)
  host set KEY=VALUE...                set host.* keys (persisted by hostkvd in its config, pushed)
  host unset KEY...                    remove host.* keys
  vm get DOMAIN [--json] [--config]    the domain's vm.* keys (libvirt metadata)
  vm set DOMAIN KEY=VALUE...           set vm.* keys (live and persistent definition)
  vm unset DOMAIN KEY...               remove vm.* keys
  enable DOMAIN... | --all             hot-plug (and persist) the hostkv channel, no reboot
  disable DOMAIN... | --all            remove exactly what enable added

A bare key gets the command's scope: ``host set rack=r12`` sets host.rack, ``vm set web1 role=web``
sets vm.role.  One module per concern: cli (arguments, exit codes), control_client (hostkvd's
control socket), libvirt_conn (connection and domain lookup), vm_keys (metadata), enable
(channel hot-plug).  Exit codes: see :mod:`hostkv.hostkvctl.cli`.
"""
