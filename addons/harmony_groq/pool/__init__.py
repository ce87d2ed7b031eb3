"""Several replicas of a gpt-oss model server: the prefix-cache estimate
(``prefix``), routing policies (``replica``), health (``pool``), failover before the first
byte (``dispatch``), resuming broken streams (``resume``) and their metrics (``collector``).
Which servers serve which model (the settings, parsed) is ``replica_spec.py``, below both
``settings`` and this package."""
