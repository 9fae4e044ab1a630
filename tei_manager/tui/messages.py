"""Typed messages that carry results from worker threads back to the UI thread.

Every engine, NVML or HTTP call runs in a thread worker; the worker never touches a widget.
It posts one of these (posting is thread-safe) and the screen's handler updates the widgets
on the UI thread.  Failures travel as messages too, holding the user-facing error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from textual.message import Message

from tei_manager.core.facts import HostFacts
from tei_manager.errors import TeiManagerError
from tei_manager.models.fingerprint import Fingerprint
from tei_manager.models.store import Pulled
from tei_manager.orchestrator import InstanceStatus
from tei_manager.tui.gateway_stats import GatewayStats
from tei_manager.tui.services import PlanPreview, ProfileEntry, ProgressLine, PullLine


@dataclass
class HostProbed(Message):
    facts: HostFacts


@dataclass
class InstancesObserved(Message):
    instances: list[InstanceStatus]
    error: TeiManagerError | None = None
    #: (profile, deployment) -> its embedding fingerprint (age, last drift)
    fingerprints: dict[tuple[str, str], Fingerprint] = field(default_factory=dict)


@dataclass
class GatewayScraped(Message):
    """`stats` is None when the gateway does not answer; `reason` says why."""

    stats: GatewayStats | None
    reason: str = ""


@dataclass
class ProfilesListed(Message):
    profiles: list[ProfileEntry]


@dataclass
class PlanPrepared(Message):
    preview: PlanPreview


@dataclass
class ApplyProgressed(Message):
    """One orchestrator progress event, already reduced to what a row shows."""

    line: ProgressLine


@dataclass
class PullProgressed(Message):
    """Bytes of one model file pulled before the apply starts instances."""

    line: PullLine


@dataclass
class ModelsPulled(Message):
    """The pull before the apply is done: each model, and how many files it fetched."""

    pulled: list[Pulled]


@dataclass
class ApplyCompleted(Message):
    ok: bool
    summary: str
    error: TeiManagerError | None = None
    drift: bool = False  # refused because a deployment's embeddings drifted: the user may accept it


@dataclass
class LogLines(Message):
    lines: list[str]


@dataclass
class InstanceInfo(Message):
    """The instance's TEI `/info` body, or the reason it could not be read."""

    name: str
    info: dict[str, object] | None
    error: str = ""


@dataclass
class ActionDone(Message):
    """A one-shot instance action (restart, stop, down) finished; `error` when it failed."""

    action: str
    target: str
    error: TeiManagerError | None = None
