"""The client APIs the proxy speaks, one module each (see ``base.Dialect``)."""
