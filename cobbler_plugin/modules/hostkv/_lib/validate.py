"""The body of the ``add/<type>/pre`` validation triggers: veto a profile/system with bad hostkv options.

Why *pre*: in Cobbler 3.3 ``Collection.add()`` runs ``add/<type>/pre`` triggers before the object
enters the collection and before it is written to disk; an exception there aborts the add/edit and
the XML-RPC call (and so the CLI) fails with the message.  An ``add/<type>/post`` trigger runs after
``serialize_one_item()``: raising there still reports an error, but the object is already saved.

Cobbler hands a trigger only the object's *name*.  A brand-new object is not in the collection yet
during *pre*, so the object is taken from the caller's frame (``utils.run_triggers(api, ref, ...)``
holds it as ``ref``); an existing object is also found by name.  If neither works (a future Cobbler),
the validation is skipped with a warning rather than blocking Cobbler.

A vetoed *edit* of an existing object: Cobbler has already applied the new values to the live object
in memory, so the saved state is read back from disk into it (:func:`restore_saved`).
"""

import logging
import sys

from . import options

logger = logging.getLogger()


def item_being_saved(api, what, name, depth=2, max_frames=6):
    """The Cobbler item of type ``what`` named ``name`` that triggered us, or None."""
    try:
        frame = sys._getframe(depth)
    except ValueError:
        frame = None
    for _ in range(max_frames):
        if frame is None:
            break
        ref = frame.f_locals.get("ref")
        if ref is not None and getattr(ref, "name", None) == name \
                and getattr(ref, "COLLECTION_TYPE", what) == what:
            return ref
        frame = frame.f_back
    try:
        return api.get_item(what, name)
    except Exception:  # noqa: BLE001 - any lookup failure means "not found"
        return None


def own_meta(item):
    """The item's own autoinstall_meta (not blended with its parents), as a dict."""
    meta = getattr(item, "_autoinstall_meta", None)
    if not isinstance(meta, dict):
        meta = getattr(item, "autoinstall_meta", {})
    return meta if isinstance(meta, dict) else {}


def restore_saved(api, item):
    """Put the saved state back into a live (already stored) item whose edit we veto.

    Cobbler 3.3 applies an edit's ``modify_item`` calls to the live object *before* ``save`` runs the
    pre triggers, so without this a vetoed edit would stay in cobblerd's memory (and in rendered
    kickstarts) until the next restart, although the file on disk is unchanged.
    """
    try:
        item.from_dict(api.deserialize_item(item))
    except Exception as err:  # noqa: BLE001 - best effort, the veto itself must still happen
        logger.warning("hostkv: could not restore the saved state of %s: %s", item.name, err)


def run_check(api, what, args):
    """Validate the ``what`` object named ``args[0]``; raise CX listing every problem; return 0."""
    from cobbler.cexceptions import CX

    if not args:
        return 0
    name = args[0]
    item = item_being_saved(api, what, name, depth=3)
    if item is None:
        logger.warning("hostkv: cannot see the %s %s being saved; hostkv options not checked",
                       what, name)
        return 0
    problems = options.check_meta(own_meta(item))
    if problems:
        if api.get_item(what, name) is item:
            restore_saved(api, item)
        raise CX("hostkv: %s %s rejected, bad autoinstall_meta: %s"
                 % (what, name, "; ".join(problems)))
    return 0
