"""Federation between homeservers — ``spec/federation/federation_protocol.md``.

* ``discovery.py``: domain → service URLs (override, ``.well-known``, subdomain rule).
* ``keys.py``: key-distribution wire structs and the remote key cache
  (``spec/federation/use_cases.md#authentication-key-distribution``).
* ``client.py``: verified-TLS HTTP client, typed federation errors, ``fetch_many``.
* ``outbound.py``: durable per-destination outbound queues.
"""
