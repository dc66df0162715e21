"""The Authentication Service (AS) — ``spec/authentication_service.md``.

``routes.py`` maps the AS rows of the endpoint table (:mod:`phoenix_ref.endpoints`)
to handlers; ``store.py`` is the AS's SQLite store.
"""
