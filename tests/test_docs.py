"""The docs match the code: the hook reference is current and every hook is documented."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _renderer():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("render_hooks", DOCS / "render_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_current() -> None:
    assert (DOCS / "hooks.md").read_text() == _renderer().render(), "run: python docs/render_hooks.py"


def test_every_hook_has_a_docstring_saying_when_it_was_added() -> None:
    for name, function in _renderer().hooks():
        doc = inspect.getdoc(function) or ""
        assert len(doc) > 40, f"{name} is not documented"
        assert "Added in" in doc, f"{name}: say which version added it"
        assert f"## `{name}(" in (DOCS / "hooks.md").read_text()
    assert {name for name, _ in _renderer().hooks()} >= {
        "register_transport",
        "register_storage",
        "register_ids",
        "register_notifier",
        "register_routes",
        "wrap_send",
        "message_accepted",
        "connection_opened",
        "connection_closed",
        "startup",
        "shutdown",
    }

    # Slot hooks stop at the first answer (hookspecs.py and hooks.md say so); the others collect all.
    slots = {"register_transport", "register_storage", "register_ids", "register_notifier"}
    for name, function in _renderer().hooks():
        assert bool(function.kibitz_spec.get("firstresult")) == (name in slots), name
