"""DataTable cells: rich Text, so that names and reasons are never read as markup.

DataTable parses plain strings as rich markup (a reason such as `deployments[0]` would be
mangled) and cannot size columns around textual Content, hence Text, with theme colours
resolved when the cell is made.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.color import Color, ColorParseError
from textual.widget import Widget


def plain(value: str) -> Text:
    return Text(value, no_wrap=True, end="")


def styled(widget: Widget, value: str, variable: str) -> Text:
    """`value` in the colour of theme variable `$name`, or dimmed for "dim"."""
    if variable == "dim":
        return Text(value, style="dim", no_wrap=True, end="")
    color = widget.app.theme_variables.get(variable.lstrip("$"))
    try:
        style = Style(color=Color.parse(color).rich_color) if color else Style()
    except ColorParseError:
        style = Style()
    return Text(value, style=style, no_wrap=True, end="")


def clip(value: str, width: int) -> str:
    """One cell never pushes the others off screen: long values end in an ellipsis."""
    return value if len(value) <= width else value[: width - 1] + "…"
