"""One exception tree for everything a user can see.

    TeiManagerError            base; carries what / where / fix
    ├── ProfileError           the YAML is wrong (exit code 2)
    ├── PlanError              the profile is valid but cannot be placed on this host (exit code 2)
    │   └── OvercommitError    instances on one GPU need more memory than it has
    ├── HostError              a host fact could not be read (NVML, Docker Engine)
    ├── BackendError           the engine refused or failed an operation (exit code 1)
    │   └── ApplyError         apply failed and was rolled back
    └── GatewayError           the gateway could not start or route

Every message answers three questions: what went wrong, where (file:key:line,
instance name, GPU index) and what to do about it.  The CLI prints them without
a traceback.
"""

from __future__ import annotations


class TeiManagerError(Exception):
    """Base class. `exit_code` is what the CLI returns for it."""

    exit_code = 1

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


class ProfileError(TeiManagerError):
    """A profile file is missing, malformed or fails validation.

    `issues` holds one `ProfileIssue` per problem so that all of them are shown at once.
    """

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 issues: list[ProfileIssue] | None = None) -> None:
        self.issues = issues or []
        super().__init__(what, where=where, fix=fix)

    def render(self) -> str:
        if not self.issues:
            return super().render()
        lines = [f"{self.where}: {self.what}" if self.where else self.what]
        lines += [f"  {issue.render()}" for issue in self.issues]
        return "\n".join(lines)


class ProfileIssue:
    """One problem in one place of a profile: `file:line key.path: message (hint)`."""

    def __init__(self, path: str, message: str, *, file: str | None = None,
                 line: int | None = None, hint: str | None = None) -> None:
        self.path = path
        self.message = message
        self.file = file
        self.line = line
        self.hint = hint
        #: True for an API key whose env var or file is not there (a warning unless --strict).
        self.unset_secret = False

    def render(self) -> str:
        location = self.file or "<profile>"
        if self.line is not None:
            location += f":{self.line}"
        text = f"{location}: {self.path or '<root>'}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"ProfileIssue({self.render()!r})"


class PlanError(TeiManagerError):
    """The profile is valid but cannot be realised on the given host."""

    exit_code = 2


class OvercommitError(PlanError):
    """The VRAM estimates of the instances placed on one GPU exceed its budget."""


class HostError(TeiManagerError):
    """A fact about the host (GPUs, Docker Engine) could not be read."""


class BackendError(TeiManagerError):
    """The container engine or process supervisor refused or failed an operation."""


class ApplyError(BackendError):
    """Apply failed; what ran before was restored."""


class GatewayError(TeiManagerError):
    """The gateway could not start, reload or route."""
