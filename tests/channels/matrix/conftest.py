"""The session's Synapse homeserver; Matrix tests register the users they need."""

from __future__ import annotations

import pytest

from tests.synapse import Synapse, shared_synapse


@pytest.fixture(scope="session")
def synapse() -> Synapse:
    return shared_synapse()
