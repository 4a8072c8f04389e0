"""Render ``kibitz/hookspecs.py`` into ``docs/hooks.md``: ``python docs/render_hooks.py``.

``tests/test_docs.py`` fails when the page is stale, so the reference always matches the
contract.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from kibitz import hookspecs

PAGE = Path(__file__).with_name("hooks.md")

INTRO = """# Hook reference

Generated from `core/hookspecs.py` by `python docs/render_hooks.py`; do not edit by hand.
How to write a plugin: [plugins.md](plugins.md).

An implementation may accept any subset of a hook's arguments. Slot hooks
(`register_*` of a slot) stop at the first answer that is not `None`; every other hook
calls all implementations, and one that raises is logged and skipped.
"""


def hooks() -> list[tuple[str, object]]:
    return [
        (name, function)
        for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(function, "kibitz_spec")
    ]


def render() -> str:
    parts = [INTRO]
    for name, function in sorted(hooks(), key=lambda item: inspect.getsourcelines(item[1])[1]):  # type: ignore[arg-type]
        options = function.kibitz_spec  # type: ignore[attr-defined]
        signature = inspect.signature(function)  # type: ignore[arg-type]
        arguments = ", ".join(signature.parameters)
        kind = "first result wins" if options.get("firstresult") else "every implementation runs"
        doc = inspect.cleandoc(function.__doc__ or "")  # type: ignore[attr-defined]
        shown = str(signature).replace("'", "")
        parts.append(f"## `{name}({arguments})`\n\n*{kind}*\n\n```python\ndef {name}{shown}\n```\n\n{doc}\n")
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
