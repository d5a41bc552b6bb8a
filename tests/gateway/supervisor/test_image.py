"""The agent image: built offline on a real engine, holding python3 and agents/ and nothing else."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import BinaryMissing, ConfigError, DockerUnavailable, ImageBuildError
from gateway.settings import DockerSettings, ImageSettings
from gateway.supervisor import (
    AGENTS_PATH,
    agents_hash,
    base_tag,
    debian_mirror,
    docker_client,
    ensure_image,
    read_agents,
    render_dockerfile,
)
from gateway.supervisor._context import build_context
from gateway.supervisor._rootfs import mounts_under, remove_leftovers, strip_rootfs
from tests.services import TEST_IMAGE, missing, require

REPO = Path(__file__).resolve().parents[3]
AGENTS_DIR = REPO / "agents"
BASE_ID = "sha256:" + "ab" * 32


def run(client: Any, image: str, *argv: str, entrypoint: str = "python3", user: str = "") -> str:
    """stdout of a one-off container with no network, as `docker run --rm --network none`."""
    output = client.containers.run(
        image,
        command=list(argv),
        entrypoint=[entrypoint],
        user=user or None,
        network_mode="none",
        remove=True,
    )
    return bytes(output).decode()


def agent_paths(agents_dir: Path) -> set[str]:
    """Every path COPY puts under /opt/stockade/agents, directories included."""
    paths = {"opt", "opt/stockade", "opt/stockade/agents"}
    for entry in read_agents(agents_dir):
        parts = f"opt/stockade/agents/{entry.path}".split("/")
        paths.update("/".join(parts[:depth]) for depth in range(3, len(parts) + 1))
    return paths


# --- the built image ---------------------------------------------------------------


def test_the_image_runs_python_with_agents_as_nobody(docker_engine: Any, agent_image: str) -> None:
    script = (
        "import agents, os, sys; print(os.getuid(), os.getgid(), os.getcwd()); print(sys.version)"
    )
    first, version = run(docker_engine, agent_image, "-c", script).splitlines()[:2]
    assert first == "65534 65534 /workspace"
    assert version.startswith("3.")


def test_the_image_is_configured_for_the_agent(docker_engine: Any, agent_image: str) -> None:
    image = docker_engine.images.get(agent_image)
    config = image.attrs["Config"]
    assert config["User"] == "65534:65534"
    assert config["WorkingDir"] == "/workspace"
    assert config["Entrypoint"] == ["python3", "-m", "agents"]
    assert not config["Cmd"]
    env = set(config["Env"])
    for variable in (
        "PYTHONPATH=/opt/stockade",
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "PYTHONSAFEPATH=1",
        "PYTHONNOUSERSITE=1",
    ):
        assert variable in env
    digest = agent_image.rsplit(":", 1)[1]
    assert config["Labels"]["org.stockade.role"] == "agent-image"
    assert config["Labels"]["org.stockade.agents-hash"] == digest
    assert docker_engine.images.get(f"{TEST_IMAGE.name}:latest").id == image.id


def test_agents_files_are_present_and_read_only_for_the_agent(
    docker_engine: Any, agent_image: str
) -> None:
    script = f"""
import json, os, pathlib
root = pathlib.Path({AGENTS_PATH!r})
everything = [root.parent, root, *root.rglob("*")]
try:
    (root / "planted.py").write_text("x = 1")
    refused = False
except PermissionError:
    refused = True
print(json.dumps({{
    "files": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
    "writable": [str(p) for p in everything if os.access(p, os.W_OK)],
    "owners": sorted({{(p.stat().st_uid, p.stat().st_gid) for p in everything}}),
    "refused": refused,
}}))
"""
    seen = json.loads(run(docker_engine, agent_image, "-c", script))
    assert seen["files"] == [entry.path for entry in read_agents(AGENTS_DIR)]
    assert seen["writable"] == []
    assert seen["owners"] == [[0, 0]]
    assert seen["refused"] is True


def test_the_image_holds_nothing_of_the_repository_but_agents(
    docker_engine: Any, agent_image: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    image = docker_engine.images.get(agent_image)
    base = docker_engine.images.get(base_tag(TEST_IMAGE))
    saved = tmp_path / "image.tar"
    with saved.open("wb") as handle:
        for chunk in image.save(named=False):
            handle.write(chunk)
    added: set[str] = set()
    with tarfile.open(saved) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = manifest[0]["Layers"]
        assert len(layers) > len(base.attrs["RootFS"]["Layers"])
        # The base's layers come first; every file after them is ours.
        for layer in layers[len(base.attrs["RootFS"]["Layers"]) :]:
            with tarfile.open(fileobj=archive.extractfile(layer)) as diff:
                added.update(member.name.strip("/").removeprefix("./") for member in diff)
    added.discard("")
    assert added == agent_paths(AGENTS_DIR) | {"workspace"}

    # And nothing in the whole filesystem that only the repository has.
    found = run(
        docker_engine,
        agent_image,
        "/",
        "-xdev",
        "(",
        *("-name", "pyproject.toml", "-o", "-name", "gateway", "-o", "-name", "channels"),
        *("-o", "-name", "stockade.toml", "-o", "-name", ".git", ")"),
        "-print",
        entrypoint="find",
        user="0:0",
    )
    assert found == ""

    # No host path in the image's configuration or history.
    recorded = json.dumps([image.attrs, image.history()])
    assert str(REPO) not in recorded
    assert str(tmp_path_factory.getbasetemp()) not in recorded


def test_code_planted_in_the_working_directory_is_not_imported(
    docker_engine: Any, agent_image: str
) -> None:
    # An agent can write its working directory; an agents/ package there must not shadow
    # the real one at the next start, nor may a usercustomize in ~/.local run.
    script = (
        "cd /tmp && mkdir -p agents .local/lib/python3.11/site-packages"
        " && echo 'raise SystemExit(\"planted\")' > agents/__init__.py"
        " && cp agents/__init__.py .local/lib/python3.11/site-packages/usercustomize.py"
        " && HOME=/tmp python3 -c 'import agents; print(agents.__file__)'"
    )
    out = run(docker_engine, agent_image, "-c", script, entrypoint="sh")
    assert out.strip() == f"{AGENTS_PATH}/__init__.py"


async def test_building_again_is_a_no_op(agent_image: str, tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    tag = await ensure_image(TEST_IMAGE, DockerSettings(), tmp_path, lines.append)
    assert tag == agent_image
    assert time.monotonic() - started < 5
    assert lines == [f"{tag} is up to date"]


async def test_a_configured_base_image_is_built_on(
    docker_engine: Any, agent_image: str, tmp_path: Path
) -> None:
    # The locally built offline base stands in for a registry image: same code path,
    # minus the pull, which needs a registry.
    agents = tmp_path / "agents"
    shutil.copytree(AGENTS_DIR, agents, ignore=shutil.ignore_patterns("__pycache__"))
    (agents / "_probe.py").write_text("VALUE = 'probe'\n")
    base = base_tag(TEST_IMAGE)
    settings = ImageSettings(name="stockade-test-from-base", base_image=base)
    lines: list[str] = []
    tag = await ensure_image(
        settings, DockerSettings(), tmp_path / "data", lines.append, agents_dir=agents
    )
    try:
        base_id = docker_engine.images.get(base).id
        assert tag == f"{settings.name}:" + agents_hash(
            read_agents(agents), render_dockerfile(base_id), base_id
        )
        assert tag.rsplit(":", 1)[1] != agent_image.rsplit(":", 1)[1]
        assert any(line.startswith("build: Step 1/") for line in lines)
        assert docker_engine.images.get(tag).labels["org.stockade.base"] == base
        out = run(docker_engine, tag, "-c", "import agents._probe as p; print(p.VALUE)")
        assert out.strip() == "probe"
    finally:
        for reference in (tag, f"{settings.name}:latest"):
            docker_engine.images.remove(reference)


async def test_without_debootstrap_the_error_names_the_package(
    docker_engine: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    settings = ImageSettings(name="stockade-test-no-debootstrap")
    with pytest.raises(BinaryMissing) as caught:
        await ensure_image(settings, DockerSettings(), tmp_path / "data")
    assert caught.value.package == "debootstrap"
    assert "apt-get install debootstrap" in str(caught.value)


async def test_a_failing_debootstrap_reports_the_end_of_its_log(
    docker_engine: Any, tmp_path: Path
) -> None:
    require("debootstrap", "debootstrap")
    if os.geteuid() != 0:
        missing("debootstrap runs as root only")
    # An empty file: mirror fails at once, without sending anything anywhere.
    (tmp_path / "mirror").mkdir()
    settings = ImageSettings(
        name="stockade-test-bad-mirror", debian_mirror=f"file://{tmp_path}/mirror"
    )
    data = tmp_path / "data"
    with pytest.raises(ImageBuildError) as caught:
        await ensure_image(settings, DockerSettings(), data)
    assert "debootstrap bookworm" in str(caught.value)
    assert any("Failed getting release file" in line for line in caught.value.log_tail)
    assert "Failed getting release file" in str(caught.value)
    assert (data / "image" / "debootstrap.log").is_file()
    assert list((data / "image").glob("rootfs-*")) == []


async def test_an_unreachable_engine_says_how_to_start_one(tmp_path: Path) -> None:
    settings = DockerSettings(url=f"unix://{tmp_path}/docker.sock")
    with pytest.raises(DockerUnavailable) as caught:
        docker_client(settings)
    assert "dockerd" in str(caught.value)
    assert caught.value.retryable
    with pytest.raises(DockerUnavailable):
        await ensure_image(ImageSettings(), settings, tmp_path)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("debian_suite", "--foreign", "image.debian_suite"),
        ("name", "Not A Name", "image.name"),
        ("debian_mirror", "--keyring=/x", "image.debian_mirror"),
    ],
)
async def test_settings_debootstrap_would_read_as_options_are_refused(
    field: str, value: str, key: str, tmp_path: Path
) -> None:
    settings = ImageSettings.model_validate({field: value})
    with pytest.raises(ConfigError) as caught:
        await ensure_image(settings, DockerSettings(url="unix:///nonexistent"), tmp_path)
    assert caught.value.key == key


# --- what goes in, and its hash ----------------------------------------------------


def test_agents_hash_follows_every_file_and_nothing_else(tmp_path: Path) -> None:
    copy = tmp_path / "agents"
    shutil.copytree(AGENTS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dockerfile = render_dockerfile(BASE_ID)

    def digest() -> str:
        return agents_hash(read_agents(copy), dockerfile, BASE_ID)

    first = digest()
    assert len(first) == 16
    assert digest() == first

    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"compiled")
    (copy / "stray.pyc").write_bytes(b"compiled")
    assert digest() == first

    init = copy / "__init__.py"
    init.write_bytes(init.read_bytes() + b"\n")
    changed = digest()
    assert changed != first

    # The same bytes under another name are another image.
    renamed = copy / "_renamed.py"
    renamed.write_bytes(init.read_bytes())
    seen = {first, changed, digest()}
    renamed.rename(copy / "_moved.py")
    seen.add(digest())

    (copy / "tools").mkdir()
    (copy / "tools" / "new.py").write_text("")
    with_new = digest()
    seen.add(with_new)
    assert len(seen) == 5
    files = read_agents(copy)
    assert agents_hash(files, dockerfile, BASE_ID) == with_new
    assert agents_hash(files, dockerfile + "\n", BASE_ID) != with_new
    assert agents_hash(files, dockerfile, "sha256:" + "cd" * 32) != with_new


def test_read_agents_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "secret.py").symlink_to("/etc/hostname")
    with pytest.raises(ImageBuildError, match=r"agents/secret\.py is not a regular file"):
        read_agents(tmp_path)


def test_read_agents_refuses_a_folder_that_is_not_the_package(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match=r"no __init__\.py"):
        read_agents(tmp_path)


def test_the_build_context_holds_the_dockerfile_agents_and_workspace_only(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "web.py").write_text("x = 1\n")
    (tmp_path / "tools" / "web.py").chmod(0o777)
    dockerfile = render_dockerfile(BASE_ID)
    context = build_context(read_agents(tmp_path), dockerfile)
    with tarfile.open(fileobj=io.BytesIO(context)) as tar:
        members = {member.name: member for member in tar}
        assert tar.extractfile("Dockerfile").read().decode() == dockerfile  # type: ignore[union-attr]
    assert set(members) == {
        "Dockerfile",
        "workspace",
        "agents",
        "agents/__init__.py",
        "agents/tools",
        "agents/tools/web.py",
    }
    assert (members["workspace"].uid, members["workspace"].gid) == (65534, 65534)
    for name in ("agents", "agents/tools"):
        assert (members[name].uid, stat.S_IMODE(members[name].mode)) == (0, 0o755)
    for name in ("agents/__init__.py", "agents/tools/web.py"):
        assert (members[name].uid, stat.S_IMODE(members[name].mode)) == (0, 0o644)
    assert f"FROM {BASE_ID}\n" in dockerfile


# --- the offline base ----------------------------------------------------------------


def test_debian_mirror_reads_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb-src http://source.example.org/debian bookworm main\n"
        "deb http://security.example.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example.org/debian/ "
        "bookworm main contrib # the main archive\n"
        "deb http://later.example.org/debian bookworm main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example.org/debian"


def test_debian_mirror_reads_deb822_sources(tmp_path: Path) -> None:
    parts = tmp_path / "sources.list.d"
    parts.mkdir()
    (parts / "a-disabled.sources").write_text(
        "Types: deb\nURIs: http://off.example.org/debian\nSuites: bookworm\nEnabled: no\n"
    )
    (parts / "debian.sources").write_text(
        "# A comment before the first stanza\n"
        "\n"
        "Types: deb deb-src\n"
        "# http://snapshot.example.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example.org/debian\n"
        "Suites: bookworm\n"
        "  bookworm-updates\n"
        "Components: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        "\n"
        "Types: deb\n"
        "URIs: http://security.example.org/debian-security\n"
        "Suites: bookworm-security\n"
    )
    (parts / "other.list.disabled").write_text(
        "deb http://ignored.example.org/debian bookworm main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example.org/debian"
    assert debian_mirror("bookworm-updates", tmp_path) == "http://mirror.example.org/debian"
    assert debian_mirror("bookworm-security", tmp_path) == (
        "http://security.example.org/debian-security"
    )


def test_debian_mirror_takes_sources_list_before_the_parts(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb https://first.example.org/debian bookworm main\n")
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "x.list").write_text(
        "deb http://second.example.org/debian bookworm main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "https://first.example.org/debian"


def test_debian_mirror_falls_back_to_a_debian_archive_of_another_suite(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb cdrom:[Debian 13]/ trixie main\n"
        "deb http://security.example.org/debian-security trixie-security main\n"
        "deb http://mirror.example.org/debian trixie main\n"
    )
    assert debian_mirror("bookworm", tmp_path) == "http://mirror.example.org/debian"


def test_debian_mirror_without_a_source_says_what_to_set(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text("deb http://archive.example.org/ubuntu noble main\n")
    with pytest.raises(ImageBuildError, match=r"image\.debian_mirror"):
        debian_mirror("bookworm", tmp_path)


def test_stripping_keeps_copyright_clears_setuid_and_follows_no_link(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "keep.txt").write_text("host file")
    for name in (
        "etc",
        "usr/share/doc/bash",
        "usr/share/man/man1",
        "var/cache/apt/archives",
        "usr/bin",
    ):
        (rootfs / name).mkdir(parents=True)
    (rootfs / "etc/hostname").write_text("buildhost\n")
    (rootfs / "etc/resolv.conf").symlink_to(outside / "keep.txt")
    (rootfs / "usr/share/doc/bash/copyright").write_text("GPL")
    (rootfs / "usr/share/doc/bash/changelog.gz").write_bytes(b"x")
    (rootfs / "usr/share/doc/dash").symlink_to(outside)
    (rootfs / "usr/share/man/man1/bash.1.gz").write_bytes(b"x")
    (rootfs / "var/cache/apt/archives/bash.deb").write_bytes(b"x")
    (rootfs / "var/log").symlink_to(outside)
    (outside / "apt/lists").mkdir(parents=True)
    (outside / "apt/lists/index").write_text("host file")
    (rootfs / "var/lib").symlink_to(outside)  # var/lib/apt/lists leads out of the tree
    su = rootfs / "usr/bin/su"
    su.write_bytes(b"x")
    su.chmod(0o4755)

    strip_rootfs(rootfs)

    assert not (rootfs / "etc/hostname").exists()
    assert not (rootfs / "etc/resolv.conf").is_symlink()
    assert (rootfs / "usr/share/doc/bash/copyright").read_text() == "GPL"
    assert not (rootfs / "usr/share/doc/bash/changelog.gz").exists()
    assert list((rootfs / "usr/share/man").iterdir()) == []
    assert list((rootfs / "var/cache/apt").iterdir()) == []
    assert stat.S_IMODE(su.stat().st_mode) == 0o755
    assert (outside / "keep.txt").read_text() == "host file"
    assert (outside / "apt/lists/index").read_text() == "host file"


def test_mounts_under_finds_what_a_killed_debootstrap_left_deepest_first() -> None:
    mountinfo = (
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "90 22 0:5 / /data/image/rootfs-x/rootfs/proc rw - proc proc rw\n"
        "91 90 0:6 / /data/image/rootfs-x/rootfs/proc/sys/fs/binfmt_misc rw - autofs a rw\n"
        "92 22 0:7 / /data/image/rootfs-x/rootfs\\040y/sys rw - sysfs sysfs rw\n"
        "93 22 0:8 / /data/image/rootfs-xy rw - tmpfs t rw\n"
    )
    assert mounts_under(mountinfo, Path("/data/image/rootfs-x")) == [
        "/data/image/rootfs-x/rootfs/proc/sys/fs/binfmt_misc",
        "/data/image/rootfs-x/rootfs y/sys",
        "/data/image/rootfs-x/rootfs/proc",
    ]
    assert mounts_under(mountinfo, Path("/data/image/rootfs-x/rootfs y")) == [
        "/data/image/rootfs-x/rootfs y/sys"
    ]


def test_a_leftover_rootfs_is_unmounted_before_it_is_deleted(tmp_path: Path) -> None:
    # What a SIGKILLed debootstrap leaves: a mount inside the target. Deleting through
    # it would delete whatever is mounted there.
    if os.geteuid() != 0:
        missing("mounting needs root")
    proc = tmp_path / "work" / "rootfs-killed" / "rootfs" / "proc"
    proc.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leftover", str(proc)], check=True)
    try:
        (proc / "inside").write_text("x")
        asyncio.run(remove_leftovers(tmp_path / "work"))
        assert not (tmp_path / "work" / "rootfs-killed").exists()
        assert mounts_under(Path("/proc/self/mountinfo").read_text(), tmp_path) == []
    finally:
        if mounts_under(Path("/proc/self/mountinfo").read_text(), tmp_path):
            subprocess.run(["umount", "--lazy", str(proc)], check=False)
