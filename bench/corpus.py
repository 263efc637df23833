"""A seeded generator of realistic support mail (raw RFC 5322 bytes).

The same seed always gives the same bytes, and the first n messages of a longer
corpus are the corpus of n, so two runs (and the "limit" and the helpdesk inside
one run) see exactly the same mail.

What it contains, per message, drawn independently:

- **kind**: 20% replies to an earlier message of the corpus (``In-Reply-To`` and
  ``References`` name it, ``Re:`` / ``AW:`` / ``SV:`` prefix), the rest new requests;
- **Cc**: 5% carry a Cc (a colleague at the sender's domain);
- **body**: plain text, multipart/alternative (text + HTML) or HTML only;
- **charset**: UTF-8 (quoted-printable, base64 or 8bit), iso-8859-1, windows-1252
  (8bit, as old Outlook sends it), iso-2022-jp (7bit), koi8-r; subjects and
  display names RFC 2047-encoded in the same charset;
- **attachments**: none for most; otherwise a few KB (logs, CSV), tens to hundreds
  of KB (screenshots, PDFs) and, rarely, 1–3 MB (scans); some with non-ASCII file
  names (RFC 2231). Binary contents are random, i.e. incompressible like real
  images and PDFs.

Customers come from a large pool, so the per-recipient rate limit on
acknowledgements (10 per 10 minutes) is rarely reached, as with real traffic.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import charset as email_charset
from email.header import Header
from email.mime.application import MIMEApplication
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr

SUPPORT = "support@example.com"
BILLING = "billing@example.com"
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CUSTOMERS = 5000

_FIRST = ["Ana", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas",
          "Katarzyna", "Luca", "Maëlle", "Nikolai", "Olga", "Pedro", "Quentin", "Rosa", "Sven",
          "Tomás", "Ulla", "Vera", "Wei", "Xenia", "Yuki", "Zoë", "Jürgen", "Søren", "Ольга",
          "山田"]
_LAST = ["Almeida", "Berger", "Costa", "Dubois", "Eriksen", "Fischer", "García", "Hansen",
         "Ivanov", "Jansen", "Kowalski", "López", "Müller", "Nakamura", "Olsen", "Petrov",
         "Quinn", "Rossi", "Schmidt", "Tanaka", "Ueda", "Vogel", "Weiß", "Yamamoto", "Zimmer"]
_DOMAINS = ["customer.example", "acme-corp.example", "shop.example.org", "mail.example.net",
            "firma.example.de", "societe.example.fr", "kaisha.example.jp", "kompaniya.example.ru",
            "bakery.example.com", "logistics.example.io"]

_TOPICS_EN = ["The printer is on fire", "Invoice 2026-{n} is wrong", "Cannot log in since the update",
              "Order #{n} never arrived", "Refund for order {n}", "VPN drops every 10 minutes",
              "Please cancel my subscription", "Error 500 on the checkout page",
              "Password reset mail does not arrive", "Question about your pricing",
              "The app crashes when I upload a photo", "Wrong address on delivery {n}"]
_BODY_EN = ("Hello,\n\nsince this morning {thing}. I tried restarting it twice and cleared the "
            "cache, but nothing changed. Our team of {n} people depends on it, so we would be "
            "grateful for a quick answer.\n\nSteps:\n1. open the dashboard\n2. click on "
            "'Export'\n3. wait about {s} seconds\n\nThe error says: \"unexpected token at line "
            "{n}\".\n\nBest regards,\n{name}\n")
_THINGS_EN = ["the export fails", "nobody can print", "the invoices show the wrong VAT",
              "our shop shows an empty cart", "the login page loops"]

_LATIN = {  # iso-8859-1 / windows-1252 texts (German, French, Spanish)
    "subjects": ["Rechnung {n} ist fehlerhaft", "Problème de connexion depuis la mise à jour",
                 "Pedido {n} no llegó – ¿qué pasó?", "Lieferung {n}: Adresse ändern",
                 "Facture n° {n} : montant erroné"],
    "body": ("Guten Tag,\n\nseit heute früh funktioniert der Export nicht mehr. Wir haben "
             "schon alles versucht (Neustart, Cache geleert) – leider ohne Erfolg. Die "
             "Fehlermeldung lautet: „Zeitüberschreitung bei Vorgang {n}“.\n\nÀ bientôt, "
             "l'équipe de Sébastien – café, crème brûlée, niño, Straße.\n\nMit freundlichen "
             "Grüßen\n{name}\n"),
}
_CP1252_EXTRA = " Kosten: 120 € – „dringend“ … ‘danke’\n"
_JA = {"subjects": ["請求書{n}について", "ログインできません", "注文{n}が届きません"],
       "body": ("お世話になっております。\n\n本日朝からエクスポート機能が動作しません。"
                "再起動とキャッシュの削除を試しましたが、改善しませんでした。\n"
                "エラー番号は{n}です。\n\nよろしくお願いいたします。\n{name}\n")}
_RU = {"subjects": ["Счёт {n} выставлен неверно", "Не могу войти в систему",
                    "Заказ {n} не доставлен"],
       "body": ("Здравствуйте!\n\nС сегодняшнего утра не работает экспорт. Мы перезапустили "
                "сервер и очистили кэш, но ошибка осталась: «тайм-аут операции {n}».\n\n"
                "С уважением,\n{name}\n")}

_REPLY_PREFIX = ["Re: ", "RE: ", "AW: ", "SV: ", "Re: Re: ", "Antw: "]
_REPLY_TEXT = ["Any news on this? It is still broken.\n",
               "Thanks, that worked! One more question though: can we also export to CSV?\n",
               "Here is the screenshot you asked for.\n",
               "Sorry, I forgot to mention: we use the Windows version.\n"]


@dataclass(frozen=True)
class Stats:
    count: int
    replies: int
    with_cc: int
    with_attachments: int
    html: int
    charsets: dict[str, int]
    total_bytes: int
    largest: int

    def summary(self) -> str:
        mb = self.total_bytes / 1e6
        cs = ", ".join(f"{k} {v}" for k, v in sorted(self.charsets.items(), key=lambda kv: -kv[1]))
        return (f"{self.count} messages, {mb:.1f} MB (largest {self.largest / 1e6:.2f} MB): "
                f"{self.replies} replies, {self.with_cc} with Cc, {self.with_attachments} with "
                f"attachments, {self.html} with HTML; charsets: {cs}")


def _enc(text: str, cs: str) -> str:
    """An RFC 2047 header value in *cs* (plain ASCII stays as it is)."""
    if text.isascii():
        return text
    return Header(text.encode(cs, "replace").decode(cs), cs).encode()


def _addr(name: str, address: str, cs: str) -> str:
    if name.isascii():
        return formataddr((name, address))
    return f"{_enc(name, cs)} <{address}>"


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.sent: list[tuple[str, str, str, str, str]] = []  # (msgid, name, addr, subject, cs)
        # A fixed pool: the first n messages of a longer corpus are the corpus of n.
        self.customers = [self._customer(i) for i in range(CUSTOMERS)]

    def _customer(self, i: int) -> tuple[str, str]:
        rng = self.rng
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        parts = ("".join(c for c in word.lower() if c.isascii() and c.isalnum())
                 for word in (first, last))
        local = ".".join(p for p in parts if p) or "customer"
        return f"{first} {last}", f"{local}{i}@{rng.choice(_DOMAINS)}"

    def charset(self) -> tuple[str, str]:
        """(charset, content-transfer-encoding)"""
        r = self.rng.random()
        if r < 0.55:
            return "utf-8", self.rng.choice(["quoted-printable", "base64", "8bit"])
        if r < 0.70:
            return "iso-8859-1", self.rng.choice(["quoted-printable", "8bit"])
        if r < 0.85:
            return "windows-1252", "8bit"
        if r < 0.93:
            return "iso-2022-jp", "7bit"
        return "koi8-r", self.rng.choice(["8bit", "base64"])

    def text_for(self, cs: str, n: int, name: str) -> tuple[str, str]:
        rng = self.rng
        if cs in ("iso-8859-1", "windows-1252"):
            subject = rng.choice(_LATIN["subjects"]).format(n=n)
            body = _LATIN["body"].format(n=n, name=name)
            if cs == "windows-1252":
                body += _CP1252_EXTRA
            return subject, body
        if cs == "iso-2022-jp":
            return rng.choice(_JA["subjects"]).format(n=n), _JA["body"].format(n=n, name=name)
        if cs == "koi8-r":
            return rng.choice(_RU["subjects"]).format(n=n), _RU["body"].format(n=n, name=name)
        subject = rng.choice(_TOPICS_EN).format(n=n)
        body = _BODY_EN.format(thing=rng.choice(_THINGS_EN), n=n, s=rng.randint(5, 90), name=name)
        if rng.random() < 0.3:  # UTF-8 mail from people who write more than ASCII
            body += "\n-- \n" + rng.choice(["Grüße aus Köln 🙂", "Ça marche — merci !", "谢谢",
                                            "Спасибо", "ありがとう"]) + "\n"
        paragraphs = rng.randint(0, 6)  # some people write long mails
        body += "".join(f"\n{_BODY_EN.format(thing=rng.choice(_THINGS_EN), n=n, s=i, name='')}"
                        for i in range(paragraphs))
        return subject, body

    def _text_part(self, body: str, cs: str, cte: str, subtype: str = "plain") -> MIMEBase:
        body = body.encode(cs, "replace").decode(cs)  # what the sender's client can say
        charset_obj = email_charset.Charset(cs)
        if cte == "quoted-printable":
            charset_obj.body_encoding = email_charset.QP
        elif cte == "base64":
            charset_obj.body_encoding = email_charset.BASE64
        else:
            charset_obj.body_encoding = None  # 7bit / 8bit: as it is
        encoded = body.encode(charset_obj.output_codec or cs, "replace")
        if cte in ("7bit", "8bit"):
            part = MIMEBase("text", subtype)
            part.set_param("charset", cs)
            part["Content-Transfer-Encoding"] = cte
            # compat32 keeps a surrogateescaped str payload as the raw 8-bit bytes
            part.set_payload(encoded.decode("ascii", "surrogateescape"))
            return part
        return MIMEText(body, subtype, charset_obj)

    def _html(self, body: str) -> str:
        paragraphs = "".join(f"<p>{line}</p>" for line in body.split("\n\n"))
        return ("<html><head><style>p{font-family:Calibri}</style></head><body>"
                f"<div class=\"WordSection1\">{paragraphs}</div>"
                "<table><tr><td><img src=\"cid:logo@x\" alt=\"logo\"></td></tr></table>"
                "</body></html>")

    def _attachment(self) -> MIMEBase:
        rng = self.rng
        r = rng.random()
        if r < 0.45:  # a log or a CSV: text, a few KB
            lines = rng.randint(40, 400)
            data = "".join(f"2026-11-02T08:{i % 60:02d}:{rng.randint(0, 59):02d} ERROR "
                           f"worker-{rng.randint(1, 9)} timeout after {rng.randint(1, 999)} ms\n"
                           for i in range(lines))
            part = MIMEText(data, "plain", "utf-8")
            name = rng.choice(["error.log", "export.csv", "Protokoll-Übersicht.txt"])
        else:
            if r < 0.85:
                size = rng.randint(10_000, 150_000)  # screenshots, PDFs
            elif r < 0.97:
                size = rng.randint(150_000, 600_000)
            else:
                size = rng.randint(1_000_000, 3_000_000)  # scans
            kind, ext, magic = rng.choice([("pdf", "pdf", b"%PDF-1.7\n"),
                                           ("png", "png", b"\x89PNG\r\n\x1a\n"),
                                           ("jpeg", "jpg", b"\xff\xd8\xff\xe0")])
            data_b = magic + rng.randbytes(size)
            if kind == "pdf":
                part = MIMEApplication(data_b, "pdf")
            else:
                part = MIMEBase("image", kind)
                part.set_payload(data_b)
                from email import encoders
                encoders.encode_base64(part)
            name = rng.choice([f"screenshot.{ext}", f"Rechnung_März.{ext}", f"scan 0{rng.randint(1, 9)}.{ext}",
                               f"фото.{ext}"])
        if name.isascii():
            part.add_header("Content-Disposition", "attachment", filename=name)
        else:
            part.add_header("Content-Disposition", "attachment", filename=("utf-8", "", name))
        return part

    def message(self, i: int) -> tuple[bytes, dict[str, object]]:
        rng = self.rng
        reply = bool(self.sent) and rng.random() < 0.20
        cs, cte = self.charset()
        if reply:
            parent_id, name, address, parent_subject, cs = rng.choice(self.sent)
            cte = "8bit" if cs in ("windows-1252",) else ("7bit" if cs == "iso-2022-jp" else cte)
            subject = rng.choice(_REPLY_PREFIX) + parent_subject
            body = rng.choice(_REPLY_TEXT) + "\n> " + "quoted text of the earlier mail\n" * 3
        else:
            name, address = rng.choice(self.customers)
            subject, body = self.text_for(cs, rng.randint(1000, 99999), name)
        html_mode = rng.random()
        attachments = []
        if rng.random() < 0.15:
            attachments = [self._attachment() for _ in range(rng.choice([1, 1, 1, 1, 2, 3]))]
        if html_mode < 0.50:
            content: MIMEBase = self._text_part(body, cs, cte)
            has_html = False
        elif html_mode < 0.85:
            content = MIMEMultipart("alternative")
            content.attach(self._text_part(body, cs, cte))
            content.attach(self._text_part(self._html(body), cs, cte, "html"))
            has_html = True
        else:
            content = self._text_part(self._html(body), cs, cte, "html")
            has_html = True
        if attachments:
            msg: MIMEBase = MIMEMultipart("mixed")
            msg.attach(content)
            for part in attachments:
                msg.attach(part)
        else:
            msg = content
        to = BILLING if rng.random() < 0.15 else SUPPORT
        msgid = f"<{i}.{rng.getrandbits(48):012x}@{address.split('@')[1]}>"
        date = START + timedelta(seconds=30 * i)
        headers = [("From", _addr(name, address, cs)), ("To", to)]
        cc = rng.random() < 0.05
        if cc:
            colleague = f"colleague{i}@{address.split('@')[1]}"
            headers.append(("Cc", _addr("Kollegin Müller" if cs != "iso-2022-jp" else "同僚",
                                        colleague, cs)))
        headers += [("Subject", _enc(subject, cs)), ("Date", format_datetime(date)),
                    ("Message-ID", msgid)]
        if reply:
            headers += [("In-Reply-To", parent_id), ("References", parent_id)]
        headers += [("User-Agent", rng.choice(["Mozilla Thunderbird 128.3", "Microsoft Outlook 16.0",
                                               "Apple Mail (2.3774)", "K-9 Mail for Android"]))]
        for key, value in reversed(headers):
            msg._headers.insert(0, (key, value))  # before the MIME headers, as clients do
        raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        if not reply:
            self.sent.append((msgid, name, address, subject, cs))
        meta = {"reply": reply, "cc": cc, "attachments": len(attachments), "html": has_html,
                "charset": cs, "message_id": msgid}
        return raw, meta


def generate(seed: int, count: int) -> Iterator[tuple[bytes, dict[str, object]]]:
    gen = _Gen(seed)
    for i in range(count):
        yield gen.message(i)


def corpus(seed: int, count: int) -> tuple[list[bytes], list[dict[str, object]]]:
    raws: list[bytes] = []
    metas: list[dict[str, object]] = []
    for raw, meta in generate(seed, count):
        raws.append(raw)
        metas.append(meta)
    return raws, metas


def stats(raws: list[bytes], metas: list[dict[str, object]]) -> Stats:
    replies = cc = att = html = 0
    charsets: dict[str, int] = {}
    for meta in metas:
        replies += bool(meta["reply"])
        cc += bool(meta["cc"])
        att += bool(meta["attachments"])
        html += bool(meta["html"])
        charsets[str(meta["charset"])] = charsets.get(str(meta["charset"]), 0) + 1
    return Stats(len(raws), replies, cc, att, html, charsets, sum(map(len, raws)),
                 max(map(len, raws), default=0))


def large_message(size: int = 24_900_000, seed: int = 25) -> bytes:
    """One mail just under *size* bytes on the wire: text, HTML and a few big scans
    (base64, so each attachment grows by 4/3 on the wire)."""
    rng = random.Random(seed)
    outer = MIMEMultipart("mixed")
    outer["From"] = "Ana Almeida <ana.almeida@customer.example>"
    outer["To"] = SUPPORT
    outer["Subject"] = "Scans of all our delivery notes (big)"
    outer["Date"] = format_datetime(START)
    outer["Message-ID"] = "<large.1@customer.example>"
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("Hello,\n\nhere are the scans you asked for.\n\nAna\n", "plain", "utf-8"))
    alt.attach(MIMEText("<p>Hello,</p><p>here are the scans you asked for.</p>", "html", "utf-8"))
    outer.attach(alt)
    head = outer.as_bytes()
    pieces = 3
    body = size - len(head) - 4000
    payload = int(body / pieces / (4 / 3 * 78 / 76)) - 9  # base64: 4/3, plus CRLF per 76
    for k in range(pieces):
        part = MIMEApplication(b"%PDF-1.7\n" + rng.randbytes(payload), "pdf")
        part.add_header("Content-Disposition", "attachment", filename=f"scan-{k + 1}.pdf")
        outer.attach(part)
    raw = outer.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert len(raw) <= size, len(raw)
    return raw
