"""Retention: what is past its days goes, as a periodic job of the outbox.

Every ``every_seconds`` one process (whichever claims the slot) deletes duplicate
keys past the dedup window, finished activities past ``[database] keep_days``, and
effects done and upload decisions recorded that long ago; quarantined activities,
dead letters and evidence stay (see ``ActivityStore.prune_finished``). Not an effect
a rule may name.
"""

from __future__ import annotations

from typing import Any

import structlog

from relay.outbox import Outbox
from relay.store.activities import ActivityStore
from relay.store.uploads import UploadRecords

__all__ = ["EVERY_SECONDS", "KIND", "Retention"]

log = structlog.get_logger(__name__)

#: The outbox kind of the job.
KIND = "retention"
#: How often it runs.
EVERY_SECONDS = 60.0


class Retention:
    name = KIND
    irreversible = False

    def __init__(
        self, store: ActivityStore, outbox: Outbox, uploads: UploadRecords | None = None
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.uploads = uploads

    def schedule(self, every_seconds: float = EVERY_SECONDS) -> None:
        self.outbox.register(KIND, self)
        self.outbox.schedule(KIND, every_seconds, KIND, {})

    async def run(self, payload: dict[str, Any]) -> None:
        seen = await self.store.prune_seen()
        activities = await self.store.prune_finished()
        effects = await self.outbox.prune(self.store.keep_days)
        uploads = await self.uploads.prune(self.store.keep_days) if self.uploads else 0
        if activities or effects or uploads:
            log.info(
                "pruned",
                activities=activities,
                effects=effects,
                uploads=uploads,
                seen=seen,
                keep_days=self.store.keep_days,
            )
