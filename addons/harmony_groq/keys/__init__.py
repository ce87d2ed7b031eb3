"""Keys per person: who may use the proxy, for which models, within which limits.

``book.py`` keeps the keys (hashed, in ``KEYS_FILE`` or the Redis state store), ``limits.py``
counts each key's requests and tokens (in this process or, shared by every proxy, in Redis),
``gate.py`` is the addon that checks every request and settles its usage, ``cli.py`` is
``./run.sh keys`` and ``usage.py`` is ``./run.sh usage``.
"""
