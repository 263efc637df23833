"""The knowledge base's pages on the portal: what every acknowledgement links to."""
from __future__ import annotations

import re
import time
from html import unescape

from starlette.testclient import TestClient

from helpdesk.web.app import make_app
from tests.servers.helpdesk import make_mail
from tests.web.conftest import BASE, body_text, web_config

ANA = "ana@customer.example"


def write(folder, slug: str, text: str) -> None:
    path = folder / f"{slug}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def visible(html: str) -> str:
    """The page's text as a reader sees it (tags dropped, entities read)."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def kb_desk(desk_factory, tmp_path):
    folder = tmp_path / "kb"
    write(folder, "printing/paper-jam", "---\nsummary: Open tray 2 and pull gently.\n---\n"
          "# Paper jam\n\nOpen **tray 2**, then pull the sheet gently.\n\n"
          "| light | meaning |\n| --- | --- |\n| red | jammed |\n")
    write(folder, "how-to-reply", "# How to reply\n\nAnswer the mail about your case.\n")
    config = web_config()
    config["knowledge_base"] = {"path": str(folder), "base_url": f"{BASE}/kb"}
    return desk_factory(**config), folder


def test_the_articles_an_ack_links_to_are_pages_anyone_can_read(desk_factory, tmp_path):
    desk, folder = kb_desk(desk_factory, tmp_path)
    desk.ingest(make_mail(ANA, "support@example.com", "Paper jam in the printer",
                          "The printer has a paper jam again, the red light is on."))
    ack = next(m for m in desk.sent_to(ANA) if "Paper jam" in str(m["Subject"]))
    link = re.search(rf"{BASE}(/kb/\S+)", body_text(ack))
    assert link and link[1] == "/kb/printing/paper-jam"
    with TestClient(make_app(desk.app), base_url=BASE) as client:  # not signed in
        page = client.get(link[1])
        assert page.status_code == 200
        text = visible(page.text)
        assert "Paper jam" in text and "Open tray 2 , then pull the sheet gently." in text
        assert "<strong>tray 2</strong>" in page.text and "<td>jammed</td>" in page.text
        assert "Reply solved" in text
        index = client.get("/kb")
        assert index.status_code == 200
        assert visible(index.text).index("How to reply") < visible(index.text).index("Paper jam")
        assert 'href="/kb/printing/paper-jam"' in index.text
        missing = client.get("/kb/printing/toner")
        assert missing.status_code == 404 and "no such article" in visible(missing.text)


def test_an_article_is_rendered_as_if_a_stranger_wrote_it(desk_factory, tmp_path):
    desk, folder = kb_desk(desk_factory, tmp_path)
    write(folder, "hostile", "# Hostile\n\n<script>alert(1)</script>\n\n"
          "<img src=x onerror=alert(2)>\n\n[click](javascript:alert(3)) "
          "[data](data:text/html;base64,PHNjcmlwdD4=) [fine](https://example.com/docs)\n")
    with TestClient(make_app(desk.app), base_url=BASE) as client:
        page = client.get("/kb/hostile")
    assert page.status_code == 200
    article = page.text[page.text.index("<article"):page.text.index("</article>")]
    tags = re.findall(r"<(\w+)([^>]*)>", article)
    assert {name for name, _ in tags} <= {"article", "h1", "p", "a"}  # no script, no img
    assert [attrs for name, attrs in tags if name == "a"] == [
        ' href="https://example.com/docs" rel="noopener noreferrer"']  # no javascript: or data:
    assert "<script>alert(1)</script>" in unescape(visible(article))  # shown as text, inert


def test_an_edited_article_shows_at_once_and_without_a_knowledge_base_there_is_none(
        desk_factory, tmp_path):
    desk, folder = kb_desk(desk_factory, tmp_path)
    with TestClient(make_app(desk.app), base_url=BASE) as client:
        assert "Answer the mail about your case." in client.get("/kb/how-to-reply").text
        write(folder, "how-to-reply", "# How to reply\n\nJust answer the last mail.\n")
        time.sleep(1.1)  # the folder is looked at again at most once a second
        assert "Just answer the last mail." in client.get("/kb/how-to-reply").text
    plain = desk_factory("plain", **web_config())
    with TestClient(make_app(plain.app), base_url=BASE) as client:
        assert client.get("/kb").status_code == 404
