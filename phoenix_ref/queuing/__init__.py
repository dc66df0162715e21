"""The Queuing Service (QS) — ``spec/queuing_service.md``.

``messages.py`` holds the wire structs, ``core.py`` the sans-IO rules
(:class:`~.core.QsCore`), ``service.py`` the async shell the homeserver
builds and runs (:class:`~.service.QsService`), ``routes.py`` the handlers
of the QS rows of the endpoint table and the websocket, ``records.py``,
``fanout.py`` and ``store.py`` the records, queue configs and SQLite store.
"""
