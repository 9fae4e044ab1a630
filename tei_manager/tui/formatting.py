"""How numbers look in the dashboard: short, fixed-width where it helps, and "–" for unknown.

Pure functions over plain values so that widgets stay dumb and the rules are tested once.
Markup uses theme variables (`$success`, `$warning`, `$error`) rather than colours, so the
same text reads well in whatever theme (light or dark terminal) the user picked.
"""

from __future__ import annotations

UNKNOWN = "–"


def mib(value: float | None) -> str:
    """`812 MiB`, `12.3 GiB`; GiB from 10 GiB on keeps the column narrow."""
    if value is None:
        return UNKNOWN
    if value >= 1024:
        return f"{value / 1024:.1f} GiB"
    return f"{int(value)} MiB"


def used_of(used: int | None, total: int) -> str:
    """`15.7/45.0 GiB`, `360 MiB/15.0 GiB` or `812/1000 MiB`: short enough for a fixed column."""
    if used is None:
        return f"{UNKNOWN}/{mib(total)}"
    if total < 1024:
        return f"{used}/{total} MiB"
    if used < 1024:
        return f"{used} MiB/{total / 1024:.1f} GiB"
    return f"{used / 1024:.1f}/{total / 1024:.1f} GiB"


def duration(seconds: float | None) -> str:
    """Uptime in the two largest units: `45s`, `12m05s`, `3h07m`, `2d04h`."""
    if seconds is None or seconds < 0:
        return UNKNOWN
    total = int(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def rate(qps: float | None) -> str:
    if qps is None:
        return UNKNOWN
    if qps >= 100:
        return f"{qps:.0f}"
    return f"{qps:.1f}"


def millis(seconds: float | None) -> str:
    if seconds is None:
        return UNKNOWN
    ms = seconds * 1000
    if ms >= 1000:
        return f"{ms / 1000:.1f}s"
    return f"{ms:.0f}ms"


def percent(fraction: float | None) -> str:
    if fraction is None:
        return UNKNOWN
    return f"{fraction * 100:.0f}%"


def level(fraction: float | None) -> str:
    """The theme variable for a load level: calm below 70%, warning to 90%, error above."""
    if fraction is None or fraction < 0.7:
        return "$success"
    if fraction < 0.9:
        return "$warning"
    return "$error"


def bar(fraction: float | None, width: int) -> str:
    """A text bar in content markup, coloured by `level`; an empty track when unknown.

    Text rather than a ProgressBar widget: one GPU is one line, which is what lets four GPUs
    and an instance table share an 80x24 terminal.
    """
    if width <= 0:
        return ""
    if fraction is None:
        return f"[dim]{'░' * width}[/]"
    clamped = min(max(fraction, 0.0), 1.0)
    filled = round(clamped * width)
    if clamped > 0 and filled == 0:
        filled = 1  # something is used: never draw it as empty
    return f"[{level(fraction)}]{'█' * filled}[/][dim]{'░' * (width - filled)}[/]"


def short_model(model_id: str) -> str:
    """`BAAI/bge-m3` -> `bge-m3`: the organisation rarely fits and rarely matters in a table."""
    return model_id.rsplit("/", 1)[-1]


def fingerprint(age_s: float | None, drift_measure: str | None = None, drift_worst: float | None = None) -> str:
    """The Fingerprint column: how old a deployment's fingerprint is, and the last change it let
    through (`3h07m · cos 0.0525`, `2d04h · Δ 0.4000` for a reranker's score); "–" when none."""
    if age_s is None:
        return UNKNOWN
    if drift_measure is None or drift_worst is None:
        return duration(age_s)
    sign = "cos" if drift_measure == "cosine" else "Δ"
    return f"{duration(age_s)} · {sign} {drift_worst:.4f}"
