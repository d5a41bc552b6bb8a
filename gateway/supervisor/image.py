"""The agent image: python3 and agents/ on a base, tagged by a hash of exactly what goes in.

`ensure_image` builds only what is missing: the offline Debian base (unless
`image.base_image` names one), then `<name>:<hash>`, also tagged `<name>:latest`.
Building the same content again is a lookup. Builds run with `network_mode="none"`
and never pull; the only traffic is debootstrap's, to the mirror apt uses, or a
pull of a configured base image that the engine does not have yet.
"""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import docker.errors as docker_errors
from docker.utils import parse_repository_tag

from gateway.errors import ConfigError, ImageBuildError
from gateway.settings import DockerSettings, ImageSettings
from gateway.supervisor._context import (
    BASE_LABEL,
    HASH_LABEL,
    ROLE_AGENT_IMAGE,
    ROLE_LABEL,
    agents_hash,
    build_context,
    read_agents,
    render_dockerfile,
)
from gateway.supervisor._docker import docker_client
from gateway.supervisor._rootfs import build_base

Progress = Callable[[str], None]

DEFAULT_AGENTS_DIR: Final = Path(__file__).resolve().parents[2] / "agents"
"""agents/ beside gateway/: the repository's in a checkout, site-packages' in an install.

Found by path, not by import: the core never imports the sandbox's code, and another
package named "agents" on sys.path must not end up in the image."""

_TAIL_LINES: Final = 15
# Docker's reference grammar, restricted: lowercase path components, no registry port
# or digest. A tag is 1-128 word characters, dots and dashes, not starting with either.
_REPOSITORY = re.compile(
    r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MIRROR_SCHEMES: Final = ("http://", "https://", "file:/")


def _ignore(line: str) -> None:
    return None


def base_tag(image: ImageSettings) -> str:
    """The offline base image's reference: `<name>-base:<suite>`."""
    return f"{image.name}-base:{image.debian_suite}"


def check_settings(image: ImageSettings) -> None:
    """Refuse names docker rejects, and a suite or mirror debootstrap would take for an option."""
    if _REPOSITORY.fullmatch(image.name) is None or len(image.name) > 200:
        raise ConfigError(
            "configuration", "image.name", "not a docker repository name (a-z, 0-9, . _ - /)"
        )
    if _TAG.fullmatch(image.debian_suite) is None:
        raise ConfigError("configuration", "image.debian_suite", "not a Debian suite name")
    if image.debian_mirror is not None and not image.debian_mirror.startswith(_MIRROR_SCHEMES):
        raise ConfigError(
            "configuration", "image.debian_mirror", "must be an http://, https:// or file:/ URL"
        )


async def ensure_image(
    image: ImageSettings,
    docker: DockerSettings,
    data_dir: Path,
    progress: Progress = _ignore,
    *,
    agents_dir: Path = DEFAULT_AGENTS_DIR,
) -> str:
    """Build what is missing of the agent image and return its tag, `<name>:<hash>`.

    `progress` gets one line at a time (debootstrap's steps, the import, the build's
    output) on the event loop's thread. The base's work directory lives under
    `data_dir/image` and is removed afterwards. Raises `ConfigError`, `DockerUnavailable`,
    `BinaryMissing` (no debootstrap) or `ImageBuildError` (with the log's last lines).
    """
    check_settings(image)
    files = await asyncio.to_thread(read_agents, agents_dir)
    client = await asyncio.to_thread(docker_client, docker)
    work_dir = data_dir / "image"
    try:
        # One build at a time per data dir: a second caller waits, then finds the images.
        async with _exclusive(work_dir, progress):
            if image.base_image is not None:
                base = image.base_image
                await _ensure_pulled(client, base, progress)
            else:
                base = base_tag(image)
                if await _image_id(client, base) is None:
                    repository = base.rsplit(":", 1)[0]
                    await build_base(
                        client,
                        repository,
                        image.debian_suite,
                        image.debian_mirror,
                        work_dir,
                        progress,
                    )
            base_id = await _image_id(client, base)
            if base_id is None:
                raise ImageBuildError(f"the base image {base} is not on the engine")
            dockerfile = render_dockerfile(base_id)
            digest = agents_hash(files, dockerfile, base_id)
            tag = f"{image.name}:{digest}"
            if await _image_id(client, tag) is not None:
                progress(f"{tag} is up to date")
            else:
                progress(f"building {tag} from {base}")
                labels = {ROLE_LABEL: ROLE_AGENT_IMAGE, HASH_LABEL: digest, BASE_LABEL: base}
                context = build_context(files, dockerfile)
                loop = asyncio.get_running_loop()

                def report(line: str) -> None:
                    loop.call_soon_threadsafe(progress, line)

                await asyncio.to_thread(_build, client, context, tag, labels, report)
                if await _image_id(client, tag) is None:
                    raise ImageBuildError(
                        f"the build reported success but {tag} is not on the engine"
                    )
            await asyncio.to_thread(_tag_latest, client, tag, image.name)
            return tag
    finally:
        client.close()


@asynccontextmanager
async def _exclusive(work_dir: Path, progress: Progress) -> AsyncIterator[None]:
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(work_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    progress("waiting for another image build to finish")
                    waited = True
                # Polling keeps the wait cancellable; a blocking flock in a thread is not.
                await asyncio.sleep(0.5)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _tag_latest(client: Any, tag: str, repository: str) -> None:
    try:
        client.api.tag(tag, repository, "latest")
    except (docker_errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"tagging {tag} as {repository}:latest failed: {exc}") from None


async def _image_id(client: Any, reference: str) -> str | None:
    # OSError: requests' connection errors (the engine went away) are not DockerExceptions.
    try:
        found = await asyncio.to_thread(client.images.get, reference)
    except docker_errors.ImageNotFound:
        return None
    except (docker_errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"the engine could not look up {reference}: {exc}") from None
    return str(found.id)


async def _ensure_pulled(client: Any, reference: str, progress: Progress) -> None:
    if await _image_id(client, reference) is not None:
        return
    progress(f"pulling the base image {reference}")
    loop = asyncio.get_running_loop()

    def report(line: str) -> None:
        loop.call_soon_threadsafe(progress, line)

    await asyncio.to_thread(_pull, client, reference, report)


def _pull(client: Any, reference: str, report: Progress) -> None:
    repository, tag = parse_repository_tag(reference)
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    try:
        for event in client.api.pull(repository, tag=tag or "latest", stream=True, decode=True):
            if "error" in event:
                raise ImageBuildError(f"pulling {reference} failed: {event['error']}", tuple(tail))
            # Per-chunk download counters are noise; layer state changes are progress.
            if "progressDetail" in event and event.get("progress"):
                continue
            line = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
            if line:
                tail.append(line)
                report(f"pull: {line}")
    except (docker_errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"pulling {reference} failed: {exc}", tuple(tail)) from None


def _build(client: Any, context: bytes, tag: str, labels: dict[str, str], report: Progress) -> None:
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    pending = ""
    try:
        stream = client.api.build(
            fileobj=io.BytesIO(context),
            custom_context=True,
            tag=tag,
            labels=labels,
            # The context holds everything; nothing is fetched, and RUN steps have no network.
            pull=False,
            network_mode="none",
            rm=True,
            forcerm=True,
            decode=True,
        )
        for event in stream:
            if "error" in event:
                tail.extend(line for line in pending.splitlines() if line.strip())
                raise ImageBuildError(
                    f"building {tag} failed: {str(event['error']).strip()}", tuple(tail)
                )
            # Build output arrives in arbitrary pieces; report whole lines.
            pending += str(event.get("stream") or "")
            *lines, pending = pending.split("\n")
            for line in lines:
                if line.strip():
                    tail.append(line.rstrip())
                    report(f"build: {line.rstrip()}")
    except (docker_errors.DockerException, OSError) as exc:
        raise ImageBuildError(f"building {tag} failed: {exc}", tuple(tail)) from None
    if pending.strip():
        report(f"build: {pending.rstrip()}")
