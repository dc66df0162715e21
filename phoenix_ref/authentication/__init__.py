"""The Authentication Service (AS) — ``spec/authentication_service.md``.

``messages.py`` holds the wire structs, ``core.py`` the sans-IO rules
(:class:`~.core.AuthenticationCore`), ``service.py`` the async shell the
homeserver builds and runs (:class:`~.service.AsService`), ``routes.py`` the
handlers of the AS rows of the endpoint table, ``accounts.py`` and
``store.py`` the AS's SQLite storage.
"""
