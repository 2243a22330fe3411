"""fs_cdr: call detail records from FreeSWITCH to SQLite, MySQL/MariaDB, PostgreSQL and Redis.

This file is what FreeSWITCH's mod_python3 names (``python fs_cdr``, ``pyrun fs_cdr``, the
``startup-script``). mod_python3 *reloads* it on every call, so it holds no state: each entry point
imports :mod:`fs_cdr.switch` (imported once, kept in ``sys.modules``) and delegates. Outside
FreeSWITCH, nothing here imports ``freeswitch``.
"""

__version__ = "0.1.0"


def handler(session, args):  # noqa: ANN001 - mod_python3's dialplan application signature
    """Dialplan: ``<action application="python" data="fs_cdr"/>`` starts the engine once."""
    from fs_cdr import switch

    switch.handler(session, args)


def fsapi(session, stream, env, args):  # noqa: ANN001 - mod_python3's API signature
    """fs_cli: ``python fs_cdr status|reload|flush|start|stop``."""
    from fs_cdr import switch

    switch.api(stream, args)


def runtime(args):  # noqa: ANN001 - mod_python3's pyrun/startup-script signature
    """``pyrun fs_cdr [path/to/cdr.json]`` or ``startup-script`` in python.conf.xml."""
    from fs_cdr import switch

    switch.runtime(args)
