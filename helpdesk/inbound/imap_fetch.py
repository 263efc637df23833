"""One pass over one IMAP folder: new UIDs → ingest → acknowledge on the server.

The order is what makes it safe:

1. UIDVALIDITY + the stored UID watermark decide what is new (never ``\\Seen``).
2. ``RFC822.SIZE`` first; a message over the size cap is never downloaded: its
   header alone goes to ``notify_too_large`` and the message to the failed folder.
3. ``BODY.PEEK[]`` in batches (count- and byte-bounded), the messages of a batch
   through ``ingest_many``, which parses them all, then decides and writes them in
   few commits (group commit: each message in a savepoint of its own).
4. Only then the message leaves the folder: MOVE to ``processed_folder`` (or
   COPY + ``\\Deleted`` + EXPUNGE), to ``failed_folder`` when quarantined, or, with
   no processed folder, ``\\Seen`` + ``$HelpdeskDone`` (just ``\\Seen`` where the
   server keeps no keywords; then a UIDVALIDITY change re-ingests, harmlessly).
5. The watermark advances past what was acknowledged, in its own transaction.

A crash before a commit of 3 leaves its messages unstored and unacknowledged: the
next pass ingests them (once). A crash between 3 and 4 re-ingests the message on the
next pass; ``ingest_many`` recognises ``(source, source_key)`` and the message is then
just acknowledged.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from imapclient import IMAPClient
from sqlalchemy.exc import SQLAlchemyError

from helpdesk.app import App
from helpdesk.config import ImapMailbox
from helpdesk.inbound import ingest
from helpdesk.inbound.imap_state import load_watermark, record_success, save_watermark

log = logging.getLogger(__name__)

DONE_KEYWORD = b"$HelpdeskDone"
SEEN = b"\\Seen"
#: Bodies fetched in one FETCH never add up to more than this (or one message), so the
#: memory a pass needs is set by the largest message, not by the batch. FETCH is under 1%
#: of the time per message (bench/), so small batches cost nothing measurable.
BODY_BUDGET = 2 * 2**20


@dataclass
class FetchResult:
    mailbox: str
    uidvalidity: int | None = None
    found: int = 0  # new UIDs this pass
    ingested: int = 0  # ingested, acknowledged to the processed folder / flag
    quarantined: int = 0  # ingested into the quarantine, moved to the failed folder
    too_large: int = 0  # not downloaded, sender notified, moved to the failed folder
    errors: int = 0  # ingest raised a bug; moved to the failed folder, logged
    vanished: int = 0  # expunged by another client before we fetched it
    interrupted: bool = False  # stop was set; the rest waits for the next pass

    @property
    def handled(self) -> int:
        """Messages that went through the pipeline (and may have queued mail)."""
        return self.ingested + self.quarantined + self.too_large

    def summary(self) -> str:
        return (f"{self.found} new, {self.ingested} ingested, {self.quarantined} quarantined, "
                f"{self.too_large} too large, {self.errors} errors")


@dataclass
class _Acks:
    """UIDs of one batch, by where they go once their transaction committed."""

    done: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # vanished: nothing to do

    def handled(self) -> set[int]:
        return {*self.done, *self.failed, *self.skipped}


@dataclass
class _Pass:
    """Everything one pass needs, so the steps below stay small."""

    app: App
    mailbox: ImapMailbox
    client: IMAPClient
    uidvalidity: int
    keywords: bool  # the folder stores $HelpdeskDone (PERMANENTFLAGS has \*)
    folders: _Folders
    result: FetchResult
    stop: threading.Event | None
    still_ours: Callable[[], bool] | None  # the mailbox lock (mailbox_lock.py) still held

    def key(self, uid: int) -> str:
        return f"{self.uidvalidity}:{uid}"


class MailboxLost(Exception):
    """This process no longer holds the mailbox's lock: another one fetches it now."""


def fetch_once(app: App, mailbox: ImapMailbox, client: IMAPClient, *,
               stop: threading.Event | None = None,
               still_ours: Callable[[], bool] | None = None) -> FetchResult:
    """One pass over ``mailbox.folder``; returns what happened.

    *stop* is looked at between groups of messages (``_by_budget``, at most a batch): the
    group in hand is finished and acknowledged, the rest waits for the next pass.
    *still_ours* is asked before each batch is acknowledged on the server: when it says
    no, ``MailboxLost`` is raised and the batch is left to the process that holds the
    mailbox now (its messages are stored already; there they are recognised and just
    moved). Raises ``ingest.StorageUnavailable`` (after acknowledging what did commit)
    when the database cannot take a message: that message stays on the server. Network
    and IMAP errors propagate; nothing unacknowledged is lost, it is fetched again.
    """
    info = client.select_folder(mailbox.folder)
    uidvalidity = int(info[b"UIDVALIDITY"])
    run = _Pass(app, mailbox, client, uidvalidity,
                keywords=b"\\*" in info.get(b"PERMANENTFLAGS", ()), folders=_Folders(client),
                result=FetchResult(mailbox.name, uidvalidity), stop=stop, still_ours=still_ours)
    uids = _new_uids(run, load_watermark(app, mailbox.name, uidvalidity))
    run.result.found = len(uids)
    for batch in _chunks(uids, mailbox.batch_size):
        acks = _Acks()
        try:
            _process_batch(run, batch, acks)
        except (ingest.StorageUnavailable, SQLAlchemyError):
            _acknowledge(run, batch, acks)
            raise
        _acknowledge(run, batch, acks)
        if run.result.interrupted:
            break
    record_success(app, mailbox.name)
    if run.result.found:
        log.info("mailbox %s: %s", mailbox.name, run.result.summary())
    return run.result


def _new_uids(run: _Pass, last_uid: int) -> list[int]:
    criteria: list[str | bytes] = ["UID", f"{last_uid + 1}:*", "UNDELETED"]
    if run.mailbox.processed_folder is None and run.keywords:
        criteria += ["NOT", "KEYWORD", DONE_KEYWORD]
    # "n:*" always matches the highest UID, even below n: filter.
    return sorted(uid for uid in run.client.search(criteria) if uid > last_uid)


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _process_batch(run: _Pass, batch: list[int], acks: _Acks) -> None:
    limit = run.app.settings.limits.max_message_size
    sizes = run.client.fetch(batch, ["RFC822.SIZE"])
    wanted: list[tuple[int, int]] = []
    for uid in batch:
        if uid not in sizes:
            acks.skipped.append(uid)
            run.result.vanished += 1
        elif (size := int(sizes[uid][b"RFC822.SIZE"])) > limit:
            _too_large(run, uid, size, acks)
        else:
            wanted.append((uid, size))
    for group in _by_budget(wanted):
        if run.stop is not None and run.stop.is_set():
            run.result.interrupted = True
            return
        bodies = run.client.fetch([uid for uid, _ in group], ["BODY.PEEK[]"])
        fetched: dict[int, bytes] = {}
        for uid, _size in group:
            raw = bodies.pop(uid, {}).get(b"BODY[]")
            if raw is None:
                acks.skipped.append(uid)
                run.result.vanished += 1
            else:
                fetched[uid] = raw
        del bodies
        _ingest_group(run, fetched, acks)


def _ingest_group(run: _Pass, fetched: dict[int, bytes], acks: _Acks) -> None:
    """The fetched mails through ``ingest_many`` (group commit), each acknowledged by
    its outcome; should it fail as a whole, one at a time."""
    if not fetched:
        return
    source = f"imap:{run.mailbox.name}"
    try:
        outcomes = ingest.ingest_many(run.app, [ingest.Received(raw, source, run.key(uid))
                                                for uid, raw in fetched.items()])
    except (ingest.StorageUnavailable, SQLAlchemyError):
        log.error("mailbox %s: database unavailable; %d message(s) left on the server",
                  run.mailbox.name, len(fetched))
        raise
    except Exception:
        log.exception("mailbox %s: ingesting %d message(s) together raised; one at a time",
                      run.mailbox.name, len(fetched))
        for uid, raw in fetched.items():
            _ingest_one(run, uid, raw, acks)
        return
    for uid, outcome in zip(fetched, outcomes):
        _acknowledge_outcome(run, uid, outcome, acks)


def _by_budget(wanted: list[tuple[int, int]]) -> Iterator[list[tuple[int, int]]]:
    group: list[tuple[int, int]] = []
    total = 0
    for uid, size in wanted:
        if group and total + size > BODY_BUDGET:
            yield group
            group, total = [], 0
        group.append((uid, size))
        total += size
    if group:
        yield group


def _ingest_one(run: _Pass, uid: int, raw: bytes, acks: _Acks) -> None:
    name, failed_folder = run.mailbox.name, run.mailbox.failed_folder
    try:
        outcome = ingest.ingest_raw(run.app, raw, source=f"imap:{name}", source_key=run.key(uid))
    except (ingest.StorageUnavailable, SQLAlchemyError):
        log.error("mailbox %s uid=%s: database unavailable; message left on the server",
                  name, run.key(uid))
        raise
    except Exception:
        # A bug, not the message's fault alone: keep the bytes (failed folder) and go on.
        log.exception("mailbox %s uid=%s: ingest raised; moving it to %s",
                      name, run.key(uid), failed_folder)
        acks.failed.append(uid)
        run.result.errors += 1
        return
    _acknowledge_outcome(run, uid, outcome, acks)


def _acknowledge_outcome(run: _Pass, uid: int, outcome: ingest.Outcome, acks: _Acks) -> None:
    if outcome.in_quarantine:
        log.warning("mailbox %s uid=%s: quarantined (%s); moving it to %s", run.mailbox.name,
                    run.key(uid), outcome.reason or outcome.status, run.mailbox.failed_folder)
        acks.failed.append(uid)
        run.result.quarantined += 1
    else:
        acks.done.append(uid)
        run.result.ingested += 1


def _too_large(run: _Pass, uid: int, size: int, acks: _Acks) -> None:
    fetched = run.client.fetch([uid], ["BODY.PEEK[HEADER]"])
    header = fetched.get(uid, {}).get(b"BODY[HEADER]")
    if header is None:
        acks.skipped.append(uid)
        run.result.vanished += 1
        return
    log.warning("mailbox %s uid=%s: %d bytes is over max_message_size; not downloaded, "
                "moving it to %s", run.mailbox.name, run.key(uid), size,
                run.mailbox.failed_folder)
    try:
        ingest.notify_too_large(run.app, header, size, source=f"imap:{run.mailbox.name}",
                                source_key=run.key(uid))
    except (ingest.StorageUnavailable, SQLAlchemyError):
        raise
    except Exception:
        log.exception("mailbox %s uid=%s: could not queue the too-large notice",
                      run.mailbox.name, run.key(uid))
    acks.failed.append(uid)
    run.result.too_large += 1


# -- acknowledging on the server -------------------------------------------------
class _Folders:
    """Creates a destination folder the first time a pass needs it."""

    def __init__(self, client: IMAPClient) -> None:
        self.client = client
        self.known: set[str] = set()

    def ensure(self, folder: str) -> None:
        if folder in self.known:
            return
        if not self.client.folder_exists(folder):
            log.info("creating IMAP folder %s", folder)
            self.client.create_folder(folder)
        self.known.add(folder)


def _acknowledge(run: _Pass, batch: list[int], acks: _Acks) -> None:
    mailbox, client = run.mailbox, run.client
    if run.still_ours is not None and not run.still_ours():
        raise MailboxLost(f"mailbox {mailbox.name}: lost its lock before acknowledging "
                          f"{len(acks.handled())} message(s); another process fetches it now")
    if acks.done:
        if mailbox.processed_folder is not None:
            move(client, acks.done, mailbox.processed_folder, run.folders)
        else:
            flags = [SEEN, DONE_KEYWORD] if run.keywords else [SEEN]
            client.add_flags(acks.done, flags, silent=True)
    if acks.failed:
        move(client, acks.failed, mailbox.failed_folder, run.folders)
    mark = _watermark(batch, acks.handled())
    if mark is not None:
        save_watermark(run.app, mailbox.name, run.uidvalidity, mark)


def _watermark(batch: list[int], handled: set[int]) -> int | None:
    """The highest UID below which everything in *batch* was handled."""
    mark = None
    for uid in batch:
        if uid not in handled:
            break
        mark = uid
    return mark


def move(client: IMAPClient, uids: list[int], folder: str, folders: _Folders | None = None) -> None:
    """MOVE when offered, else COPY + ``\\Deleted`` + (UID) EXPUNGE."""
    (folders or _Folders(client)).ensure(folder)
    if client.has_capability("MOVE"):
        client.move(uids, folder)
        return
    client.copy(uids, folder)
    client.delete_messages(uids, silent=True)
    if client.has_capability("UIDPLUS"):
        client.uid_expunge(uids)
    else:
        client.expunge()
