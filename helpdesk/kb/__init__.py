"""The knowledge base: a folder of Markdown articles, searched in process.

A room of its own (STYLE 2.2a): ``articles`` reads the folder, ``index`` ranks
articles for a text (BM25F with stemming), ``calibration`` says where a score
stops being worth a customer's time, and ``library`` puts them together behind
one object the rest of the helpdesk uses: it notices edits without a restart and
hands the core plain ``(slug, title, url, score)`` suggestions. Nothing here
touches the helpdesk's database, so SQLite and PostgreSQL deployments search the
same way.
"""
