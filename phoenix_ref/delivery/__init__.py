"""The Delivery Service (DS) — ``spec/delivery_service.md``.

``messages.py`` holds the wire structs, ``routes.py`` the handlers of the
DS rows of the endpoint table, ``store.py`` the DS's SQLite store.
"""
