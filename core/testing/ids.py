"""The contract every IdGenerator keeps, as tests any ids plugin runs against itself.

Subclass ``IdsContract`` in a test module, name the class ``Test...``, and set
``plugin`` (its entry-point name) and, if it needs any, ``settings`` (its TOML table).
The generators run on ``kibitz.testing.slot_app``; override the fixture ``database_url``
to run them on another database than SQLite in the test's folder::

    class TestMyIds(IdsContract):
        plugin = "mine"
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .slot_app import slot_app, started_slot

MAX_ID = 2**53


class IdsContract:
    """Ids that only grow, never repeat across instances, fit 2**53, and bound retention."""

    plugin: ClassVar[str]
    settings: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def database_url(self, tmp_path: Path) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / 'ids.sqlite3'}"

    @pytest.fixture
    def make_ids(self, tmp_path: Path, database_url: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
        """A started generator on the test's database, as another instance would run it."""

        @asynccontextmanager
        async def make() -> AsyncIterator[Any]:
            instance = uuid.uuid4().hex[:12]
            async with (
                slot_app(tmp_path / instance, database_url, instance_id=instance) as app,
                started_slot("ids", self.plugin, app, self.settings) as ids,
            ):
                yield ids

        return make

    async def test_ids_only_grow_and_fit_2_to_the_53(self, make_ids: Any) -> None:
        async with make_ids() as ids:
            given = [ids.next_id() for _ in range(5000)]
        assert all(1 <= i <= MAX_ID for i in given)
        assert given == sorted(set(given))

    async def test_instances_sharing_a_database_never_give_the_same_id(self, make_ids: Any) -> None:
        async with make_ids() as one, make_ids() as two:
            given = [ids.next_id() for _ in range(3000) for ids in (one, two)]
        assert len(set(given)) == len(given)

    async def test_ids_grow_across_a_restart(self, make_ids: Any) -> None:
        async with make_ids() as ids:
            before = max(ids.next_id() for _ in range(1000))
        async with make_ids() as ids:
            assert ids.next_id() > before

    async def test_first_id_at_never_cuts_an_id_given_after_it(self, make_ids: Any) -> None:
        async with make_ids() as ids:
            cut = ids.first_id_at(int(time.time() * 1000))
            assert all(ids.next_id() >= cut for _ in range(1000))
            assert ids.first_id_at(int(time.time() * 1000) - 86_400_000) <= cut
