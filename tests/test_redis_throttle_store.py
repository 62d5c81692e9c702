"""The Redis throttle store's own cases against a real redis-server: edges the shared tests miss."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.redis
