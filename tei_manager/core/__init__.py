"""The pure core: profile schema, host facts, planner.

Nothing under this package may import docker, httpx, textual or torch, or touch the
network, the file system or the clock; a test checks `sys.modules` after importing it.
"""
