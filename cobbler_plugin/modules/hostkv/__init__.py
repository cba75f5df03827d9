"""hostkv's Cobbler 3.3 trigger modules (installed as ``cobbler.modules.hostkv`` by hostkv-cobbler).

Cobbler's module loader imports every ``cobbler/modules/*/*.py`` and registers those with a
``register()`` function; the helpers live one level deeper in ``_lib/`` so the loader never sees them.
"""
