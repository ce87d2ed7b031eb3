"""Several replicas of a gpt-oss model server: settings (``spec``), the prefix-cache estimate
(``prefix``), routing policies (``replica``), health (``pool``), failover before the first
byte (``dispatch``), resuming broken streams (``resume``) and their metrics (``collector``)."""
