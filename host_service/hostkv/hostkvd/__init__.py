"""hostkvd: the host side of hostkv.

Serves every guest channel socket it is given (explicitly, or discovered through libvirt) with
the host's key/value snapshot: pushes it on every connect and on every change, and answers the
guest's requests.  One module per concern:

  config      the config file (/etc/hostkv/hostkvd.conf): parsing with line numbers, atomic edits
  hostvalues  the host.* values: built-ins (host.hostname, host.fqdn) plus configured keys
  ratelimit   token buckets that throttle a misbehaving guest
  timeout     the one timed wait: never loses a cancellation (asyncio.wait_for can)
  dirwatch    inotify waits: a channel directory changed, a socket appeared (no polling)
  channel     one guest connection: connect with backoff, push, answer, rate-limit
  daemon      Hostkvd: host values + the set of channels; the API channel sources call
  control     the root-only unix control socket used by hostkvctl
  sources/    where channels come from: explicit paths/directories, libvirt
"""

from hostkv.common.version import VERSION  # noqa: F401 - the one version source
