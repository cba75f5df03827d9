"""Writes key-source links into guests' domain metadata: hostkvd's only write to libvirt.

hostkvd's libvirt channel source is read-only, and stays so.  A key source (hostkvd/keysources/)
that read new keys for a guest stores them in that guest's metadata (so they travel with live
migration and survive an outage of the source) through :class:`MetadataWriter`:

  * every batch runs in a short-lived child process (``python -m hostkv.hostkvd.metadata_writer
    URI``, JSON on stdin and stdout) that opens its own READ-WRITE connection, writes, and exits.
    libvirt calls are synchronous and hostkvd's connection lives on its event loop (libvirtaio is
    not thread-safe): in a child, a libvirtd that hangs costs the batch its ``timeout``, never the
    loop that serves the guests, and the read-write connection exists only while it is needed.
  * for each domain and each view that exists (the persistent definition first, then the live
    one) it reads hostkv's element, and replaces ONLY the link of that source type - local keys,
    the policy, other sources and everything outside hostkv's namespace stay as they are
    (:class:`hostkv.common.domain_xml.HostkvMetadata`); a view whose element would not change is
    not written (no needless metadata-change event, no needless push).
  * compare-and-set on the link's identity: if the metadata no longer links that guest to the
    same place (an admin re-linked or unlinked it meanwhile), that view is left alone and the
    result says so.  libvirt has no atomic read-modify-write of metadata; the window between
    this child's read and write is a few milliseconds (a concurrent ``hostkvctl vm set`` in that
    window could lose its change, which ``vm get`` would show).
  * batches are serialised (one child at a time); results are ``{key: None or problem}``.
"""

import asyncio
import json
import logging
import os
import subprocess
import sys

from hostkv.common import domain_xml

log = logging.getLogger("hostkvd.metadata")

BASE_TIMEOUT = 30.0        # seconds per batch, plus PER_DOMAIN_TIMEOUT per domain
PER_DOMAIN_TIMEOUT = 0.1


class MetadataWriter(object):
    def __init__(self, uri, python=sys.executable, base_timeout=BASE_TIMEOUT):
        self.uri = uri
        self.python = python
        self.base_timeout = base_timeout
        self.batches = 0
        self.writes = 0            # views actually rewritten
        self._lock = asyncio.Lock()

    async def write_links(self, links):
        """``{key: SourceLink}`` -> ``{key: None or problem}`` (keys are domain UUIDs)."""
        if not links:
            return {}
        request = {"uri": self.uri, "links": [
            {"uuid": key, "type": link.type, "attrs": link.attrs, "values": link.values}
            for key, link in sorted(links.items())]}
        timeout = self.base_timeout + PER_DOMAIN_TIMEOUT * len(links)
        async with self._lock:
            loop = asyncio.get_event_loop()
            results = await loop.run_in_executor(None, self._run_child, request, timeout)
        self.batches += 1
        out = {}
        for key in links:
            res = results.get(key, {"problem": "no answer from the metadata writer"})
            self.writes += res.get("written", 0)
            for dropped in res.get("dropped", []):
                log.warning("domain %s: rewriting its hostkv metadata dropped %s", key, dropped)
            out[key] = res.get("problem")
        return out

    def _run_child(self, request, timeout):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        try:
            res = subprocess.run([self.python, "-m", "hostkv.hostkvd.metadata_writer"],
                                 input=json.dumps(request).encode("utf-8"), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return self._all(request, "libvirt did not finish the metadata writes within %.0f s" % timeout)
        except OSError as err:
            return self._all(request, "cannot run the metadata writer: %s" % err)
        if res.returncode != 0:
            why = res.stderr.decode("utf-8", "replace").strip()[-400:] or "exit status %d" % res.returncode
            return self._all(request, "metadata writer failed: %s" % why)
        try:
            return json.loads(res.stdout.decode("utf-8"))["results"]
        except (ValueError, KeyError, TypeError):
            return self._all(request, "metadata writer answered garbage")

    @staticmethod
    def _all(request, problem):
        return dict((item["uuid"], {"problem": problem}) for item in request["links"])


# ---------------------------------------------------------------- the child process

def _views(dom):
    import libvirt
    views = []
    if dom.isPersistent():
        views.append(("config", libvirt.VIR_DOMAIN_AFFECT_CONFIG))
    if dom.isActive():
        views.append(("live", libvirt.VIR_DOMAIN_AFFECT_LIVE))
    return views


def _read(dom, flags):
    import libvirt
    try:
        return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.NS, flags)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise


def write_one(conn, item):
    """Write one link into every view of one domain that still has the same link."""
    import libvirt
    new = domain_xml.SourceLink(item["type"], item["attrs"], item["values"])
    try:
        dom = conn.lookupByUUIDString(item["uuid"])
    except libvirt.libvirtError:
        return {"problem": "the domain is not on this host any more"}
    written, dropped, skipped = 0, [], []
    for view, flags in _views(dom):
        meta, problems = domain_xml.parse_metadata(_read(dom, flags))
        old = meta.source(new.type)
        if old is None or old.identity() != new.identity():
            skipped.append(view)
            continue
        updated = meta.copy()
        updated.set_source(new)
        if updated == meta:
            continue
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, updated.to_xml(), domain_xml.NS_PREFIX,
                        domain_xml.NS, flags)
        written += 1
        dropped.extend(problems)
    out = {"written": written, "dropped": dropped}
    if skipped and ("live" in skipped or not dom.isActive()):
        out["problem"] = ("its metadata no longer links it to %s (%s view); left alone"
                          % (new.describe(), "/".join(skipped)))
    return out


def child_main():
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    try:
        conn = libvirt.open(request["uri"])
    except libvirt.libvirtError as err:
        sys.stderr.write("cannot open %s read-write: %s" % (request["uri"], err.get_error_message()))
        return 1
    results = {}
    try:
        for item in request["links"]:
            try:
                results[item["uuid"]] = write_one(conn, item)
            except (libvirt.libvirtError, domain_xml.DomainXMLError, ValueError) as err:
                message = err.get_error_message() if isinstance(err, libvirt.libvirtError) else str(err)
                results[item["uuid"]] = {"problem": "libvirt refused the metadata write: %s" % message}
    finally:
        conn.close()
    sys.stdout.write(json.dumps({"results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(child_main())
