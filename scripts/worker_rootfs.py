#!/usr/bin/env python3
"""Lay out the root filesystem of a local image from this host's Python.

Used by scripts/build-worker-image.sh; run it with the Python whose site-packages holds the
distributions the target needs. It never copies the big files itself:

    worker_rootfs.py [--target T] hash                 print the base image's hash, the final
                                                       image's hash (base + package sources) and
                                                       the site-packages path
    worker_rootfs.py [--target T] layout STAGING_DIR   write the small generated files under
                                                       STAGING_DIR and two NUL-separated lists for
                                                       GNU tar: STAGING_DIR.host.list (paths
                                                       relative to /) and STAGING_DIR.staging.list
                                                       (paths relative to STAGING_DIR)

Two targets (default `worker`), which differ only in what `TARGETS` below says:
  worker   the fallback worker: the `[worker]` extra (torch, transformers, ...), `tei-fallback-worker`;
  gateway  tei-manager itself (CLI and gateway): its dependencies plus the `[redis]` and
           `[kubernetes]` extras a gateway in a cluster uses, `tei-manager`; no torch.

What goes in: the Python prefix's interpreter and standard library (without its tests, IDLE,
tkinter, headers and static library), the distributions the target needs (closure of their
requirements, read from the installed metadata), the shared libraries all of that links against
(resolved with ldd), dash as /bin/sh, sleep (the Kubernetes manifests' preStop hook runs it), a
launcher for the target's console script, a health-check script, /etc/passwd with an
unprivileged user (uid 10001), a writable HOME and /tmp. The repository's package
(`fallback_worker`, `tei_manager`) is not part of it: build-worker-image.sh adds it as a thin
layer on top, so a change to the code rebuilds only that layer.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# The uid the exported Kubernetes manifests run every pod as (runAsUser), in both images.
IMAGE_UID = 10001
# Bump when the layout changes in a way the hashed inputs below do not show.
LAYOUT_VERSION = "1"


@dataclass(frozen=True)
class Target:
    """One image built by this machinery: what it holds and how it starts."""

    package: str  # the repository's package, added as a layer of its own on top of the base
    script: str  # the console script (pyproject.toml's [project.scripts]) the image runs
    extras: tuple[str, ...]  # pyproject.toml extras whose requirements go in
    core: bool  # whether the project's own [project] dependencies go in too
    healthcheck: str  # where docker/healthcheck.py goes in /usr/local/bin
    user: str  # unprivileged user (uid IMAGE_UID) and the name of its HOME
    title: str  # for /etc/os-release and /etc/passwd

    @property
    def home(self) -> str:
        return f"/home/{self.user}"


TARGETS = {
    "worker": Target(package="fallback_worker", script="tei-fallback-worker", extras=("worker",), core=False,
                     healthcheck="tei-worker-healthcheck", user="worker", title="fallback worker"),
    "gateway": Target(package="tei_manager", script="tei-manager", extras=("redis", "kubernetes"), core=True,
                      healthcheck="tei-manager-healthcheck", user="tei-manager", title="tei-manager gateway"),
}
TARGET = TARGETS["worker"]  # set by main() from --target

PREFIX = Path(sys.base_prefix)
STDLIB = Path(sysconfig.get_paths()["stdlib"])
PURELIB = Path(sysconfig.get_paths()["purelib"])
# Differs from PURELIB inside a virtual environment: the image's interpreter is the base one.
BASE_PURELIB = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"])
PYTHON_BIN = Path(sys.executable).resolve()

# Standard-library parts a TEI-compatible HTTP worker never uses.
STDLIB_EXCLUDE = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages"}
STDLIB_EXCLUDE_PREFIX = ("config-",)  # static libpython and Makefile for building extensions
# Inside the included distributions: C++ headers, C++ test binaries and data, test suites.
SITE_EXCLUDE_DIRS = {"tests", "__tests__"}
SITE_EXCLUDE_PATHS = {"torch/include", "torch/test", "torch/share"}
# torch/bin holds C++ test programs and protoc; `import torch` needs only the shared-memory manager.
SITE_KEEP_ONLY = {"torch/bin": {"torch_shm_manager"}}


def fail(message: str) -> None:
    print(f"worker_rootfs: error: {message}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------- distributions
def target_requirements() -> list[Requirement]:
    """The target's requirements in pyproject.toml: the image holds what they need and nothing else."""
    pyproject = REPO / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
        names = list(project["dependencies"]) if TARGET.core else []
        for extra in TARGET.extras:
            names += project["optional-dependencies"][extra]
        return [Requirement(r) for r in names]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as exc:
        fail(f"cannot read the requirements of the {TARGET.package} image from {pyproject}: {exc}")
        raise  # unreachable


def target_entry_point() -> str:
    """`module:function` of the target's console script, as pyproject.toml declares it."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    try:
        return data["project"]["scripts"][TARGET.script]
    except KeyError:
        fail(f"pyproject.toml declares no [project.scripts] {TARGET.script} entry point")
        raise


def distribution_closure() -> list[md.Distribution]:
    """Installed distributions the target needs, following requirements and their extras."""
    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[Requirement, str]] = [(r, "") for r in target_requirements()]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            fail(
                f"'{req}' (needed by the {TARGET.package} image) is not installed in {PREFIX}; "
                "run ./scripts/install.sh first"
            )
        seen[name] = dist
        for wanted in {""} | set(req.extras):
            if (name, wanted) in done:
                continue
            done.add((name, wanted))
            for sub in dist.requires or []:
                todo.append((Requirement(sub), wanted))
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def distribution_roots(dist: md.Distribution) -> set[Path]:
    """Top-level files and directories a distribution installed into site-packages."""
    if dist.files is None:
        fail(f"{dist.metadata['Name']} has no RECORD (installed without pip?): reinstall it with pip")
    roots: set[Path] = set()
    for f in dist.files:
        parts = Path(f).parts
        if not parts or parts[0] in ("..", "__pycache__"):
            continue
        roots.add(PURELIB / parts[0])  # includes NAME-VERSION.dist-info (RECORD lists itself)
    return roots


# ----------------------------------------------------------------------------- file walking
def walk(root: Path, skip) -> list[Path]:
    """Every file, symlink and directory under root (root included), pruning where skip() says."""
    out = [root]
    if root.is_symlink() or not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not skip(base / d)]
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in filenames if not skip(base / f))
    return out


def skip_site(path: Path) -> bool:
    rel = path.relative_to(PURELIB).as_posix()
    keep_only = SITE_KEEP_ONLY.get(path.parent.relative_to(PURELIB).as_posix())
    if keep_only is not None and path.name not in keep_only:
        return True
    return path.name in SITE_EXCLUDE_DIRS or rel in SITE_EXCLUDE_PATHS


def skip_stdlib(path: Path) -> bool:
    rel = path.relative_to(STDLIB)
    top = rel.parts[0]
    if len(rel.parts) == 1 and (top in STDLIB_EXCLUDE or top.startswith(STDLIB_EXCLUDE_PREFIX)):
        return True
    return path.name.startswith("_tkinter")  # lib-dynload/_tkinter*.so links libtk


def root_level_pycache(module_file: Path) -> list[Path]:
    """Compiled copies of a top-level module (site-packages/__pycache__/NAME.cpython-311*.pyc)."""
    cache = module_file.parent / "__pycache__"
    if module_file.suffix != ".py" or not cache.is_dir():
        return []
    return sorted(cache.glob(f"{module_file.stem}.*.pyc"))


# ----------------------------------------------------------------------------- shared libraries
LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)\s*$")
LDD_LOADER = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)\s*$")
LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found\s*$")


def elf_files(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if p.is_symlink() or not p.is_file():
            continue
        try:
            with p.open("rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    out.append(p)
        except OSError:
            continue
    return out


def shared_libraries(binaries: list[Path]) -> tuple[set[Path], list[str]]:
    """Libraries the binaries load (as ldd resolves them on this host), and the unresolvable ones."""
    libs: set[Path] = set()
    missing: list[str] = []
    batch = 64
    for i in range(0, len(binaries), batch):
        chunk = [str(b) for b in binaries[i : i + batch]]
        proc = subprocess.run(["ldd", *chunk], capture_output=True, text=True)
        current = chunk[0]
        for line in proc.stdout.splitlines():
            if line.endswith(":") and line[:-1] in chunk:
                current = line[:-1]
            elif m := LDD_LINE.match(line):
                libs.add(Path(m.group(2)))
            elif m := LDD_LOADER.match(line):
                libs.add(Path(m.group(1)))
            elif m := LDD_MISSING.match(line):
                missing.append(f"{current}: {m.group(1)}")
    return libs, missing


def with_link_chain(path: Path) -> list[Path]:
    """A path as the loader asks for it plus every symlink hop to the real file, with /lib and
    friends (symlinks on merged-/usr systems) kept as separate entries."""
    out: list[Path] = []
    current = path
    for _ in range(16):
        parent = current.parent.resolve()
        canonical = parent / current.name
        out.append(canonical)
        if not canonical.is_symlink():
            break
        current = (parent / os.readlink(canonical)).absolute()
    return out


# ----------------------------------------------------------------------------- hash
def package_sources() -> list[Path]:
    pkg = REPO / TARGET.package
    if not (pkg / "__init__.py").is_file():
        fail(f"{pkg}/__init__.py not found: the {TARGET.package} package is missing from this checkout")
    return sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def base_hash() -> str:
    """Names the base image: interpreter, distributions, layout and the build scripts."""
    h = hashlib.sha256()
    h.update(f"layout={LAYOUT_VERSION}\ntarget={TARGET}\npython={sys.version}\nprefix={PREFIX}\nsite={PURELIB}\n".encode())
    for dist in distribution_closure():
        h.update(f"dist={canonicalize_name(dist.metadata['Name'])}=={dist.version}\n".encode())
    h.update(f"entry={target_entry_point()}\n".encode())
    here = Path(__file__).resolve().parent
    for path in (here / "worker_rootfs.py", here / "build-worker-image.sh", REPO / "docker" / "healthcheck.py"):
        h.update(f"file={path.relative_to(REPO)}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def content_hash(base: str) -> str:
    """Names the final image: the base plus the package's sources."""
    h = hashlib.sha256(f"base={base}\n".encode())
    for path in package_sources():
        h.update(f"file={path.relative_to(REPO)}\n".encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- layout
def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def layout(staging: Path) -> None:
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)

    # ---- host files: interpreter, stdlib, the target's distributions
    host: list[Path] = [PYTHON_BIN]
    for name in ("python3", "python"):
        link = PREFIX / "bin" / name
        if link.is_symlink():
            host.append(link)
    host += sorted((PREFIX / "lib").glob("libpython3*.so*"))
    host += walk(STDLIB, lambda p: p != STDLIB and skip_stdlib(p))

    dists = distribution_closure()
    site_roots = set().union(*(distribution_roots(d) for d in dists))
    for root in sorted(site_roots):  # .pth files included: only those these distributions installed
        if not root.exists() and not root.is_symlink():
            continue
        host += walk(root, skip_site)
        host += root_level_pycache(root)

    # ---- /bin/sh: dash; sleep: the exported Kubernetes manifests' preStop hook runs it
    dash = Path(shutil.which("dash") or "/usr/bin/dash")
    if not dash.is_file():
        fail("dash not found (it provides /bin/sh inside the image): apt-get install -y dash")
    host += with_link_chain(dash)
    sleep = Path(shutil.which("sleep") or "/usr/bin/sleep")
    if not sleep.is_file():
        fail("sleep not found (the preStop hook of the Kubernetes manifests runs it): apt-get install -y coreutils")
    host += with_link_chain(sleep)

    # ---- shared libraries of everything above
    libs, missing = shared_libraries(elf_files(host))
    in_image = {p.resolve() for p in host}
    for lib in sorted(libs):
        if lib.resolve() not in in_image:
            host += with_link_chain(lib)
    for merged in ("/bin", "/sbin", "/lib", "/lib64"):  # merged-/usr symlinks
        if Path(merged).is_symlink():
            host.append(Path(merged))
    for extra in ("/etc/ld.so.cache", "/etc/ssl/certs/ca-certificates.crt"):
        if Path(extra).exists():
            host.append(Path(extra))
    if missing:
        unique = sorted(set(missing))
        print(f"worker_rootfs: note: {len(unique)} optional libraries are not on this host:", file=sys.stderr)
        for m in unique[:10]:
            print(f"  {m}", file=sys.stderr)

    # ---- generated files (the package itself is added on top, as a layer of its own)
    if PURELIB != BASE_PURELIB:  # a virtual environment: let the base interpreter see its packages
        write(staging / BASE_PURELIB.relative_to("/") / "tei-worker-venv.pth", f"{PURELIB}\n")
    module, func = target_entry_point().split(":")
    write(
        staging / "usr/local/bin" / TARGET.script,
        f"#!{PYTHON_BIN}\nimport sys\nfrom {module} import {func}\n\nif __name__ == '__main__':\n    sys.exit({func}())\n",
        0o755,
    )
    health = (REPO / "docker" / "healthcheck.py").read_text()
    write(staging / "usr/local/bin" / TARGET.healthcheck, f"#!{PYTHON_BIN}\n{health}", 0o755)
    for name in ("python3", "python"):
        link = staging / "usr/local/bin" / name
        link.symlink_to(PYTHON_BIN)
    (staging / "usr/bin").mkdir(parents=True, exist_ok=True)
    (staging / "usr/bin/sh").symlink_to("dash")
    write(
        staging / "etc/passwd",
        f"root:x:0:0:root:/root:/bin/sh\n"
        f"{TARGET.user}:x:{IMAGE_UID}:{IMAGE_UID}:{TARGET.title}:{TARGET.home}:/usr/sbin/nologin\n",
    )
    write(staging / "etc/group", f"root:x:0:\n{TARGET.user}:x:{IMAGE_UID}:\n")
    os_id = "tei-manager-worker" if TARGET.package == "fallback_worker" else "tei-manager"
    write(staging / "etc/os-release", f'NAME="tei-manager {TARGET.title} (local build)"\nID={os_id}\n')
    home = staging / TARGET.home.lstrip("/")
    (home / ".cache").mkdir(parents=True)
    for d in (home, home / ".cache"):
        os.chown(d, IMAGE_UID, IMAGE_UID)
        d.chmod(0o755)
    (staging / "tmp").mkdir(exist_ok=True)  # exists already when a virtual environment lives in /tmp
    (staging / "tmp").chmod(0o1777)
    if TARGET.package == "fallback_worker":
        (staging / "models").mkdir(exist_ok=True)  # where the manager mounts model directories

    # ---- lists: parents first, each path once, in a stable order
    def with_parents(paths, top: Path) -> list[str]:
        rels: set[str] = set()
        for p in paths:
            rel = Path(os.path.relpath(p, top))
            for i in range(1, len(rel.parts) + 1):
                rels.add(Path(*rel.parts[:i]).as_posix())
        generated = {p.relative_to(staging).as_posix() for p in staging.rglob("*")} if top == Path("/") else set()
        return sorted(rels - generated)

    host_list = with_parents([p.absolute() for p in host], Path("/"))
    staging_list = with_parents(staging.rglob("*"), staging)
    Path(f"{staging}.host.list").write_bytes(b"".join(s.encode() + b"\0" for s in host_list))
    Path(f"{staging}.staging.list").write_bytes(b"".join(s.encode() + b"\0" for s in staging_list))
    names = ", ".join(f"{canonicalize_name(d.metadata['Name'])} {d.version}" for d in dists)
    print(f"worker_rootfs: {len(host_list)} host paths, {len(staging_list)} generated; distributions: {names}")


def main(argv: list[str]) -> None:
    global TARGET
    if len(argv) >= 3 and argv[1] == "--target":
        if argv[2] not in TARGETS:
            fail(f"unknown --target '{argv[2]}' (one of: {', '.join(TARGETS)})")
        TARGET = TARGETS[argv[2]]
        argv = [argv[0], *argv[3:]]
    if len(argv) == 2 and argv[1] == "hash":
        base = base_hash()
        print(base, content_hash(base), PURELIB)
    elif len(argv) == 3 and argv[1] == "layout":
        layout(Path(argv[2]).absolute())
    else:
        fail(f"usage: {argv[0]} [--target {'|'.join(TARGETS)}] hash | layout STAGING_DIR")


if __name__ == "__main__":
    main(sys.argv)
