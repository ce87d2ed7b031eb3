"""Server tools the proxy runs for gpt-oss (harmony's built-in ``browser`` and ``python``)."""
