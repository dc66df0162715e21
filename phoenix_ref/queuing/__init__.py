"""The Queuing Service (QS) — ``spec/queuing_service.md``.

``routes.py`` maps the QS rows of the endpoint table (:mod:`phoenix_ref.endpoints`)
to handlers; ``store.py`` is the QS's SQLite store.
"""
