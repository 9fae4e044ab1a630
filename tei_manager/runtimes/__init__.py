"""Runtimes: the servers that answer for one instance (TEI, the fallback worker, ...).

See `base.Runtime` for the contract and `registry` for how to add one.
"""
