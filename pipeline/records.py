"""What flows from an import's sources to its writer: one put or delete per record.

Sources turn shard lines into records; the writer batches them into BatchWriteItem calls.
A record remembers which source file it came from, so the import knows when a file is fully
written (its checkpoint) and where a dead-lettered item was read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

RecordKind = Literal["put", "delete"]


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write: ``item`` is the whole item (put) or its key attributes (delete).

    ``item`` is in DynamoDB JSON (``{"pk": {"S": "a"}}``); ``size`` is its DynamoDB item size
    in bytes (``codec.item_size``), from which its write capacity units follow.
    """

    kind: RecordKind
    item: dict[str, Any]
    size: int
    source: str

    def request(self) -> dict[str, Any]:
        """The BatchWriteItem request for this record."""
        if self.kind == "put":
            return {"PutRequest": {"Item": self.item}}
        return {"DeleteRequest": {"Key": self.item}}
