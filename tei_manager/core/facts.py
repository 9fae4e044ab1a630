"""Facts about a host that the planner needs, as plain values.

`tei_manager.probe` reads them from pynvml and the Docker Engine; `--gpus` builds them
from a string to plan for another host.  Pure core: no I/O here.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuProcess(Frozen):
    pid: int
    used_mib: int
    name: str = ""


class GpuFact(Frozen):
    """One GPU as NVML reports it."""

    index: int
    name: str
    total_mib: int
    compute_capability: tuple[int, int]
    uuid: str | None = None
    free_mib: int | None = Field(None, description="None when planning for another host.")
    utilization_pct: int | None = None
    processes: tuple[GpuProcess, ...] = ()

    @property
    def arch_label(self) -> str:
        major, minor = self.compute_capability
        return f"{major}.{minor}"


class DockerFact(Frozen):
    """Whether a Docker Engine answers, and whether it can hand out GPUs."""

    reachable: bool
    version: str | None = None
    nvidia_runtime: bool = False
    error: str | None = Field(None, description="Why it is unreachable, for the user.")


class HostFacts(Frozen):
    gpus: tuple[GpuFact, ...] = ()
    docker: DockerFact = DockerFact(reachable=False, error="not probed")
    nvml_error: str | None = Field(None, description="Why no GPU could be listed (None when NVML answered).")
    cpu_count: int | None = None
    cpu_arch: Literal["x86_64", "arm64"] = Field(
        "x86_64", description="The host's CPU architecture: images are built per architecture."
    )
    memory_bytes: int | None = None
    origin: Literal["live", "described"] = Field(
        "live", description="`described` when the facts were given (--gpus) rather than probed."
    )

    def gpu(self, index: int) -> GpuFact | None:
        return next((g for g in self.gpus if g.index == index), None)


_GPU_SPEC = re.compile(
    r"^\s*(?P<index>\d+)\s*:\s*(?P<name>[^:]+?)\s*:\s*(?P<mem>\d+(?:\.\d+)?)\s*(?P<unit>MiB|GiB|MB|GB)?\s*"
    r":\s*(?P<major>\d+)\.(?P<minor>\d+)\s*$",
    re.IGNORECASE,
)


def parse_gpu_specs(text: str) -> tuple[GpuFact, ...]:
    """Parse `--gpus "0:NVIDIA L20:46068MiB:8.9,1:Tesla T4:15360MiB:7.5"`.

    Each GPU is `index:name:memory:compute_capability`; memory in MiB unless it says GiB.
    Raises ValueError with the offending part and the expected shape.
    """
    gpus: list[GpuFact] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _GPU_SPEC.match(part)
        if not match:
            raise ValueError(
                f"cannot read GPU {part!r}; write index:name:memory:compute_capability, "
                f"e.g. 0:NVIDIA L20:46068MiB:8.9"
            )
        mem = float(match["mem"])
        unit = (match["unit"] or "MiB").lower()
        total_mib = int(mem * 1024) if unit in {"gib", "gb"} else int(mem)
        gpus.append(
            GpuFact(
                index=int(match["index"]),
                name=match["name"],
                total_mib=total_mib,
                compute_capability=(int(match["major"]), int(match["minor"])),
            )
        )
    indices = [g.index for g in gpus]
    if len(set(indices)) != len(indices):
        raise ValueError(f"GPU index listed twice in {text!r}")
    return tuple(gpus)


def normalize_arch(machine: str) -> Literal["x86_64", "arm64"]:
    """`platform.machine()` or `--cpu-arch` -> the two names image registries use here."""
    lowered = machine.lower()
    if lowered in {"aarch64", "arm64", "armv8", "armv8l"}:
        return "arm64"
    if lowered in {"x86_64", "amd64", "x64", ""}:
        return "x86_64"
    raise ValueError(f"unknown CPU architecture {machine!r}; use x86_64 or arm64")
