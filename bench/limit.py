"""The bare loop: the least any IMAP-to-database helpdesk must do on this machine.

    python -m bench.limit OUT.json HOST PORT USER PASSWORD FOLDER DATABASE_URL BATCH SMTP_PORT

imapclient fetches every message of FOLDER (``BODY.PEEK[]``, read-only, in
batches of BATCH like the helpdesk's fetcher), mail-parser parses each (fed the
way ``helpdesk.mail.parsing`` feeds it, which is faster than
``mailparser.parse_from_bytes``: the loop must not be a straw man), one
SQLAlchemy INSERT per message (Message-ID, sender, subject and the raw bytes)
commits in its own transaction, on an engine made by ``helpdesk.store.db`` (the
same SQLite pragmas: WAL, a durable commit), and the same mails go out as the
helpdesk sends for it, over one SMTP connection kept open for the whole run: for a
new request (no In-Reply-To, no References) an acknowledgement to the sender and one
to each address in Cc, and for every message a notice to staff (a few headers and a
line of text, formatted as a string: no template, no MIME library). Nothing else: no
threading, no threads of cases, no attachments on disk, no outbox, no acknowledgement
on the IMAP server.

imaplib's tracing is set to level 4 as ``helpdesk.inbound.imap_session.connect``
does (imapclient's default, 5, formats a repr of every fetched body). Timed from
the first FETCH to the last commit, in a process of its own.
"""
from __future__ import annotations

import json
import smtplib
import sys
import time
from email.utils import formatdate, make_msgid
from pathlib import Path

import mailparser
from imapclient import IMAPClient
from sqlalchemy import (
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
)

from helpdesk.mail.parsing import _message_from_bytes
from helpdesk.store.db import make_engine

metadata = MetaData()
received = Table("received", metadata,
                 Column("id", Integer, primary_key=True),
                 Column("uid", Integer, nullable=False),
                 Column("message_id", String(998)),
                 Column("sender", Text),
                 Column("subject", Text),
                 Column("raw", LargeBinary, nullable=False))


ACK = ("From: Example Support <support@example.com>\r\nTo: {to}\r\nSubject: Re: {subject}\r\n"
       "Date: {date}\r\nMessage-ID: {mid}\r\nIn-Reply-To: {parent}\r\n"
       "Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
       "Content-Type: text/plain; charset=utf-8\r\n\r\n"
       "We have received your message and will answer soon.\r\n")


STAFF = "agent@example.com"


def answer(smtp: smtplib.SMTP, mail: mailparser.MailParser) -> int:
    """The helpdesk's mails for this message, as strings; returns how many went out."""
    sender = mail.from_[0][1] if mail.from_ else "postmaster@example.com"
    new_request = not (mail.message.get("In-Reply-To") or mail.message.get("References"))
    recipients = []
    if new_request:  # the requester and each other address in Cc, once, not the desk itself
        for address in [sender, *(cc for _, cc in mail.cc)]:
            if address and address not in recipients and address != "support@example.com":
                recipients.append(address)
    subject = " ".join(str(mail.subject or "").split())
    for to in [*recipients, STAFF]:
        text = ACK.format(to=to, subject=subject, date=formatdate(),
                          mid=make_msgid(domain="example.com"), parent=mail.message_id or "<>")
        smtp.sendmail("support@example.com", [to], text.encode("utf-8"))
    return len(recipients) + 1


def main() -> None:
    out, host, port, user, password, folder, url, batch_text, smtp_port = sys.argv[1:]
    batch = int(batch_text)
    engine = make_engine(url)
    metadata.create_all(engine)
    count = mails = 0
    smtp = smtplib.SMTP("127.0.0.1", int(smtp_port), timeout=120)
    with IMAPClient(host, int(port), ssl=False, timeout=120) as client:
        client._imap.debug = 4  # as helpdesk's connect(): no repr of every fetched body
        client.login(user, password)
        client.select_folder(folder, readonly=True)
        uids = sorted(client.search("ALL"))
        first_fetch = time.monotonic()
        for start in range(0, len(uids), batch):
            chunk = uids[start:start + batch]
            bodies = client.fetch(chunk, ["BODY.PEEK[]"])
            for uid in chunk:
                raw = bodies.pop(uid)[b"BODY[]"]
                mail = mailparser.MailParser(_message_from_bytes(raw))
                with engine.begin() as connection:
                    connection.execute(insert(received).values(
                        uid=uid, message_id=mail.message_id, sender=str(mail.from_),
                        subject=mail.subject, raw=raw))
                mails += answer(smtp, mail)
                count += 1
        end = time.monotonic()
    smtp.quit()
    engine.dispose()
    Path(out).write_text(json.dumps({"first_fetch": first_fetch, "end": end, "count": count,
                                           "mails": mails}))


if __name__ == "__main__":
    main()
