"""The `tei-manager` command line: one thin module per command (or command group)."""
