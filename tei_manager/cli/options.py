"""The `--backend` option and every backend's own options, added to the commands that take them.

Backends declare their options in their registry entry (only the Docker backend has
`--docker-url`); `with_backend_options` adds them to a command's signature and hands the
command one `backend_options` mapping, so no command names a backend option itself.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import typer

from tei_manager.services import all_options, auto_backend_names, backend_names

F = TypeVar("F", bound=Callable[..., Any])

BACKEND_HELP = ("auto (the backend that already runs the profile, else the first that answers: "
                + ", ".join(auto_backend_names()) + ") or one of: " + ", ".join(backend_names()) + ".")


def backend_choice(value: str) -> str:
    """`--backend` callback: an unknown name is a usage error (exit code 2) naming the choices."""
    choices = ("auto", *backend_names())
    if value.lower() not in choices:
        listed = ", ".join(choices[:-1]) + f" or {choices[-1]}"
        raise typer.BadParameter(f"{value!r}: choose {listed}", param_hint="--backend")
    return value.lower()


def backend_option(default: str = "auto", help: str = BACKEND_HELP) -> Any:
    return typer.Option(default, "--backend", help=help, callback=backend_choice)


def with_backend_options(func: F) -> F:
    """Give `func` one CLI option per backend option; it receives them as `backend_options`."""
    hints = typing.get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    params = [p.replace(annotation=hints.get(p.name, p.annotation))
              for p in signature.parameters.values() if p.name != "backend_options"]
    extra = [
        inspect.Parameter(
            option.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
            default=typer.Option(None, option.flag, envvar=option.envvar, help=option.help),
        )
        for option in all_options()
    ]
    names = [option.name for option in all_options()]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = {name: kwargs.pop(name, None) for name in names}
        return func(*args, backend_options=options, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**{p.name: p.annotation for p in params}, **dict.fromkeys(names, Optional[str])}
    return typing.cast(F, wrapper)
