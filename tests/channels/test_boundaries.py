"""Trust-zone rules for channel code, read from the source: what adapters may import, and
that each platform SDK is loaded only by its own adapter (the registry imports it lazily)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
CORE_ALLOWED: Final = frozenset(
    ("gateway.envelope", "gateway.sanitize", "gateway.bus", "gateway.errors", "gateway.settings")
)
SDKS: Final = {
    "telegram": "telegram",
    "slack_bolt": "slack",
    "slack_sdk": "slack",
    "twilio": "whatsapp",
    "discord": "discord",
    "nio": "matrix",
}


def imports(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", sources("channels"), ids=lambda p: str(p.relative_to(ROOT)))
def test_channel_code_imports_only_the_cores_edge_modules(path: Path) -> None:
    core = [m for m in imports(path) if m.split(".")[0] == "gateway"]
    refused = [m for m in core if ".".join(m.split(".")[:2]) not in CORE_ALLOWED]
    assert refused == [], f"{path.name} imports core internals"


@pytest.mark.parametrize(
    "path", sources("channels") + sources("gateway"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_a_platform_sdk_is_imported_only_by_its_own_adapter(path: Path) -> None:
    parts = path.relative_to(ROOT).parts
    home = parts[1] if parts[0] == "channels" and len(parts) > 2 else None
    for module in imports(path):
        owner = SDKS.get(module.split(".")[0])
        assert owner is None or owner == home, f"{module} imported in {path}"
