"""The explorer's pages: one module per page, listed in `PAGES`.

A page module has `TITLE` and `render(ctx: Ctx) -> None`, and optionally
`unavailable(ctx) -> Optional[str]` (why the page does not apply to this checkpoint; the
page is then left out of the navigation). Inside `render`:

* the shared prompt: `p = ctx.prompt()` (ids, labels, pieces), one text box for every page;
* state: `ctx.view.get(name)`, `ctx.layer()`, `ctx.head()`, `ctx.pos(T, default)`; widgets bound
  to the URL: `ctx.view.widget("selectbox", "name", "Label", options=...)` (add new names
  to `app/state.PARAMS`); selections from clicks: `app.state.set_param(name, value)`;
* numbers: cached calls in `app/data/` (which call `interp`; see its `__init__` for the map); figures: `interp.plots`,
  drawn with `common.chart(fig, key, on_point=...)` (click to select) and
  `common.export(...)` (CSV / .npz downloads);
* bad input: raise `app.data.AppError("what is wrong and what to do")`.

Adding a page = a new module here plus one `Page(...)` line below (its slug is the
`?page=` value).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Optional

from . import attention, attribution, compare, features, lens, patching, steps, streams, thoughts, training
from .common import Ctx, Prompt

__all__ = ["Ctx", "Page", "PAGES", "Prompt", "available"]


@dataclass(frozen=True)
class Page:
    slug: str
    module: ModuleType

    @property
    def title(self) -> str:
        return self.module.TITLE

    def render(self, ctx: Ctx) -> None:
        self.module.render(ctx)

    def unavailable(self, ctx: Ctx) -> Optional[str]:
        check = getattr(self.module, "unavailable", None)
        return check(ctx) if check is not None else None


PAGES = [
    Page("attention", attention),
    Page("streams", streams),
    Page("lens", lens),
    Page("attribution", attribution),
    Page("patching", patching),
    Page("steps", steps),
    Page("thoughts", thoughts),
    Page("features", features),
    Page("compare", compare),
    Page("training", training),
]


def available(ctx: Ctx) -> list[Page]:
    return [p for p in PAGES if p.unavailable(ctx) is None]
