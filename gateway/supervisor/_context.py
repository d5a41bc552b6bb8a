"""What goes into the agent image: the agents/ files, the Dockerfile, their hash and build context.

Pure apart from `read_agents`. The files are read once and the same bytes are both
hashed and sent to the engine, so the tag always names what the image holds.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
from pathlib import Path
from typing import Final, NamedTuple

from gateway.errors import ImageBuildError

AGENT_UID: Final = 65534
"""The agent runs as "nobody": it owns nothing in the image but its workspace."""
AGENTS_ROOT: Final = "/opt/stockade"
AGENTS_PATH: Final = f"{AGENTS_ROOT}/agents"
WORKSPACE: Final = "/workspace"

ROLE_LABEL: Final = "org.stockade.role"
HASH_LABEL: Final = "org.stockade.agents-hash"
BASE_LABEL: Final = "org.stockade.base"
ROLE_AGENT_IMAGE: Final = "agent-image"
ROLE_AGENT_BASE: Final = "agent-base"

MIN_PYTHON: Final = (3, 11)
"""PYTHONSAFEPATH needs 3.11; the build refuses a base image with an older python3."""

# Bumped when the way the image is put together changes without the text of the
# Dockerfile changing (the context layout, file modes), so old tags are not reused.
_FORMAT: Final = b"stockade-agent-image/1\n"

_DOCKERFILE: Final = """\
# The Stockade agent image: python3 and agents/, nothing else from the repository.
# Rendered by gateway/supervisor/_context.py; see deploy/README.md.
FROM {base_id}
COPY agents {agents_path}
COPY --chown={uid}:{uid} workspace {workspace}
# PYTHONSAFEPATH keeps the working directory (the agent's own writable workspace) off
# sys.path, and PYTHONNOUSERSITE ignores ~/.local there: code the agent writes never runs
# at the next start.
ENV PYTHONPATH={agents_root} PYTHONSAFEPATH=1 PYTHONNOUSERSITE=1 \\
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME={workspace}
WORKDIR {workspace}
USER {uid}:{uid}
RUN ["python3", "-c", "import sys; assert sys.version_info >= {min_python}, sys.version"]
ENTRYPOINT ["python3", "-m", "agents"]
CMD []
"""


class AgentFile(NamedTuple):
    """One file of agents/: its path relative to agents/ (POSIX) and its bytes."""

    path: str
    data: bytes


def _skipped(relative: Path) -> bool:
    return "__pycache__" in relative.parts or relative.suffix in (".pyc", ".pyo")


def read_agents(agents_dir: Path) -> tuple[AgentFile, ...]:
    """Every file of the agents package, sorted by path; caches of compiled code are skipped.

    A symlink or special file is refused: it could carry a host file into the image.
    """
    if not (agents_dir / "__init__.py").is_file():
        raise ImageBuildError(f"{agents_dir} is not the agents package (no __init__.py)")
    files: list[AgentFile] = []
    for path in sorted(agents_dir.rglob("*")):
        relative = path.relative_to(agents_dir)
        if _skipped(relative):
            continue
        mode = path.lstat().st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            raise ImageBuildError(
                f"agents/{relative.as_posix()} is not a regular file; only files go in the image"
            )
        files.append(AgentFile(relative.as_posix(), path.read_bytes()))
    return tuple(sorted(files))


def render_dockerfile(base_id: str) -> str:
    """The agent image's Dockerfile, FROM the base image pinned by its id."""
    return _DOCKERFILE.format(
        base_id=base_id,
        agents_root=AGENTS_ROOT,
        agents_path=AGENTS_PATH,
        workspace=WORKSPACE,
        uid=AGENT_UID,
        min_python=MIN_PYTHON,
    )


def agents_hash(files: tuple[AgentFile, ...], dockerfile: str, base_id: str) -> str:
    """16 hex digits of a sha256 over the files (path and bytes), the Dockerfile and the base id.

    Each part is length-prefixed, so no two different inputs run together into the
    same bytes. 64 bits tell builds apart and stay readable in `docker ps`.
    """
    digest = hashlib.sha256(_FORMAT)
    for part in (base_id.encode(), dockerfile.encode()):
        digest.update(b"%d\n" % len(part) + part)
    for path, data in sorted(files):
        name = path.encode()
        digest.update(b"%d\n" % len(name) + name + b"%d\n" % len(data))
        digest.update(data)
    return digest.hexdigest()[:16]


def _entry(
    name: str, *, mode: int, uid: int = 0, size: int = 0, directory: bool = False
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode, info.uid, info.gid, info.size, info.mtime = mode, uid, uid, size, 0
    return info


def build_context(files: tuple[AgentFile, ...], dockerfile: str) -> bytes:
    """An in-memory tar: the Dockerfile, agents/ (root-owned, read-only to others) and workspace/.

    Nothing else is in it, so nothing else from the repository can reach the image.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        text = dockerfile.encode()
        tar.addfile(_entry("Dockerfile", mode=0o644, size=len(text)), io.BytesIO(text))
        # The empty workspace/ gives /workspace to the agent user; a fresh named volume
        # mounted there copies that ownership, so the agent can write its own files.
        tar.addfile(_entry("workspace", mode=0o755, uid=AGENT_UID, directory=True))
        made: set[str] = set()
        for path, data in files:
            parts = f"agents/{path}".split("/")
            for depth in range(1, len(parts)):
                folder = "/".join(parts[:depth])
                if folder not in made:
                    made.add(folder)
                    tar.addfile(_entry(folder, mode=0o755, directory=True))
            name = "/".join(parts)
            tar.addfile(_entry(name, mode=0o644, size=len(data)), io.BytesIO(data))
    return buffer.getvalue()
