"""Render ``kibitz/hookspecs.py`` into ``docs/hooks.md``: ``python docs/render_hooks.py``.

``tests/test_docs.py`` fails when the page is stale, so the reference always matches the
contract.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from kibitz import App, hookspecs

PAGE = Path(__file__).with_name("hooks.md")

INTRO = f"""# Hook reference

Generated from `core/hookspecs.py` and `core/app_protocol.py` by
`python docs/render_hooks.py`; do not edit by hand. How to write a plugin:
[plugins.md](plugins.md). The slot protocols are `kibitz.slots` (`core/slots.py`).

Plugin API version: **{hookspecs.PLUGIN_API}** (`kibitz.PLUGIN_API`). A minor version
only adds; each hook and each member of `App` says when it was added.

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
    parts.append(f"## `App`: what a plugin may use\n\n{inspect.cleandoc(App.__doc__ or '')}\n")
    for name, member in App.__dict__.items():
        if name.startswith("_") or not (isinstance(member, property) or inspect.isfunction(member)):
            continue
        function = member.fget if isinstance(member, property) else member
        shown = str(inspect.signature(function)).replace("'", "").replace("(self)", "").replace("self, ", "")
        kind = (
            "property"
            if isinstance(member, property)
            else ("async def" if inspect.iscoroutinefunction(function) else "def")
        )
        line = (
            f"app.{name}: {shown.removeprefix(' -> ')}" if kind == "property" else f"{kind} app.{name}{shown}"
        )
        parts.append(
            f"### `{name}`\n\n```python\n{line}\n```\n\n{inspect.cleandoc(function.__doc__ or '')}\n"
        )
    return "\n".join(parts)


if __name__ == "__main__":
    PAGE.write_text(render())
    print(f"wrote {PAGE}", file=sys.stderr)
