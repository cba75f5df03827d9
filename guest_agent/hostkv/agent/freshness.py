"""The one freshness rule: may a reader trust the published values as current?

``judge(doc, run_dir)`` -> :class:`Verdict` (``fresh``, ``reason``).  The data is fresh only if
ALL of these hold (docs/AGENT.md "Freshness", docs/PROTOCOL.md "Freshness"):

  1. values.json says ``"stale": false`` - the agent received these values from the host on
     the current connection, the host has not told it they cannot be delivered
     (``snapshot-undeliverable``), and it has not seen the host go away since;
  2. values.json says ``"connected": true``;
  3. an agent is running: it holds ``RUN_DIR/agent.lock`` (liveness.py).  Without 3, 1 and 2
     are the last words of an agent that was killed and cannot be believed.

``reason`` says, for people, why the data is not fresh: the first rule that fails, with the
agent's own ``stale_reason`` when it published one.  ``hostkv status``, ``get --fresh``,
``list --fresh`` and ``watch --fresh`` all use this function and nothing else.
"""

from hostkv.agent import liveness


class Verdict(object):
    __slots__ = ("fresh", "reason", "agent_running", "agent_pid")

    def __init__(self, fresh, reason, agent_running, agent_pid):
        self.fresh = fresh
        self.reason = reason              # None when fresh
        self.agent_running = agent_running    # True / False / None (cannot tell)
        self.agent_pid = agent_pid

    def __repr__(self):
        return "Verdict(fresh=%r, reason=%r)" % (self.fresh, self.reason)


def judge(doc, run_dir, running=None):
    """The verdict on values.json's document ``doc`` (a dict) published in ``run_dir``.

    ``running``: a (running, pid) pair already read from liveness.agent_running (else read now)."""
    if running is None:
        running = liveness.agent_running(run_dir)
    alive, pid = running
    if alive is None:
        reason = "cannot tell whether the agent is running (%s is not readable)" \
                 % liveness.lock_path(run_dir)
    elif not alive:
        reason = "the agent is not running"
    elif doc.get("stale", True) is not False:
        reason = doc.get("stale_reason") or "marked stale by the agent"
    elif doc.get("connected") is not True:
        reason = doc.get("stale_reason") or "host not connected"
    else:
        return Verdict(True, None, alive, pid)
    return Verdict(False, reason, alive, pid)
