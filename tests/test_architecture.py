"""The core stays pure: no I/O library is imported there and no clock is read."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "helpdesk" / "core"
FORBIDDEN = {"sqlalchemy", "smtplib", "imaplib", "imapclient", "aiosmtpd", "socket", "subprocess",
             "os", "pathlib", "time", "mailparser", "jinja2", "helpdesk.store", "helpdesk.inbound",
             "helpdesk.outbound", "helpdesk.app", "helpdesk.config"}


def imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_core_modules_import_no_io_and_read_no_clock():
    modules = sorted(CORE.glob("*.py"))
    assert len(modules) >= 8
    for path in modules:
        source = path.read_text()
        imports = imported_names(ast.parse(source))
        bad = {name for name in imports
               if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)}
        assert not bad, f"{path.name} imports {sorted(bad)}"
        assert ".now(" not in source and "utcnow" not in source, f"{path.name} reads the clock"
