"""The Delivery Service (DS) — ``spec/delivery_service.md``.

``routes.py`` maps the DS rows of the endpoint table (:mod:`phoenix_ref.endpoints`)
to handlers; ``store.py`` is the DS's SQLite store.
"""
