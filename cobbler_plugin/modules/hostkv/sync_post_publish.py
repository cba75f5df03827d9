"""Cobbler trigger sync/post: publish the hostkv-agent RPMs as a repo at /cobbler/pub/hostkv/.

Source: ``rpm_dir`` (+ ``rpm_pattern``) from /etc/hostkv/cobbler.conf, default
/usr/share/hostkv/rpms/hostkv-agent-*.noarch.rpm.  Target: ``<webdir>/pub/hostkv`` (Cobbler's
``webdir`` setting, /var/www/cobbler by default), built and swapped in atomically; see _lib/publish.py.

No RPMs found: a warning in the sync's log, the repo already published (if any) stays, the sync
succeeds.  A broken config or a failing createrepo_c: CX, so ``cobbler sync`` reports the failure.
"""

import logging
import os

from ._lib import config, publish

logger = logging.getLogger()


def register():
    return "/var/lib/cobbler/triggers/sync/post/*"


def run(api, args):
    """Publish; returns 0 (Cobbler's 'success'), raises CX on a real failure."""
    from cobbler.cexceptions import CX

    try:
        conf = config.load()
    except config.ConfigError as err:
        raise CX("hostkv: %s" % err)
    rpms = publish.find_rpms(conf["rpm_dir"], conf["rpm_pattern"])
    pub_dir = os.path.join(api.settings().webdir, "pub")
    if not rpms:
        logger.warning("hostkv: no RPMs match %s in %s; nothing published under %s/%s",
                       conf["rpm_pattern"], conf["rpm_dir"], pub_dir, publish.LINK_NAME)
        return 0
    try:
        repo, changed = publish.publish(rpms, pub_dir, conf["createrepo"])
    except (publish.PublishError, OSError) as err:
        raise CX("hostkv: publishing the agent repo failed: %s" % err)
    logger.info("hostkv: %s %s/%s -> %s (%d RPMs)", "published" if changed else "unchanged",
                pub_dir, publish.LINK_NAME, os.path.basename(repo), len(rpms))
    return 0
