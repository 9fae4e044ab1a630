"""Placeholder: replaced by the module that implements these commands."""

import typer


def register(app: typer.Typer) -> None:
    return None
