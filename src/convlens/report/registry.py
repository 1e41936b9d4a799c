"""The sections a report can hold: register, unregister, list, select.

A section is a key (also its anchor, ``#cl-KEY``), a title, an order on the
page and a builder: a function from the :class:`~convlens.report.context.ReportContext`
to the section's body HTML (``None`` leaves the section out). Builders usually
render a template (:func:`convlens.report.templating.render`), which escapes
every value; a builder that returns a ``str`` it built itself is responsible
for escaping it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import BadArgument

if TYPE_CHECKING:  # pragma: no cover
    from ..core.layers import LayerInfo
    from ..model import Model
    from .context import ReportContext, SectionConsumer

__all__ = ["ConsumerFactory", "Section", "SectionBuilder", "get_section", "register_section",
           "section_keys", "select_sections", "unregister_section"]

#: A section builder: the context in, the section's body as HTML out (``None``: no section).
SectionBuilder = Callable[["ReportContext"], "str | None"]
#: A section's pass consumer factory: ``(model, the report's selected layers, the section's
#: options)`` in, a :class:`~convlens.report.context.SectionConsumer` (or ``None``) out.
ConsumerFactory = Callable[["Model", "Sequence[LayerInfo]", "Mapping[str, Any]"], "SectionConsumer | None"]


@dataclass(frozen=True)
class Section:
    """One registered section."""

    key: str
    title: str
    order: float
    build: SectionBuilder
    default: bool = True
    consumer: ConsumerFactory | None = None


_SECTIONS: dict[str, Section] = {}


def register_section(key: str, title: str, *, order: float, default: bool = True,
                     consumer: ConsumerFactory | None = None) -> Callable[[SectionBuilder], SectionBuilder]:
    """Add a section to every report (a decorator).

    Args:
        key: a short id (letters, digits, ``-``), also the section's anchor;
            registering a key again replaces the old builder.
        title: the heading.
        default: part of a report that names no sections; ``False`` for a
            section that costs minutes (feature visualisation), which is then
            built only when asked for by key.
        order: where it goes; built-in sections use 10-60 (see :mod:`convlens.report`),
            e.g. heatmaps would take 45, after the feature maps.

    The builder receives the :class:`~convlens.report.context.ReportContext`
    and returns the body HTML or ``None`` to leave it out. Render it from a
    template with :func:`convlens.report.templating.render` (autoescaped, and
    it returns ``Markup``); anything built by hand is the builder's to escape
    (:func:`convlens.render.html.escape`). Pictures below the fold should use
    :func:`convlens.report.templating.lazy_img`. A section's own options come
    from ``ctx.section_options[key]`` (``build_report(..., section_options={key: ...})``).

    ``consumer``: for a section that needs layer outputs of the report's images,
    a factory called once before the forward pass (it may raise a convlens
    error, which then stops the report before any work). The consumer it
    returns is fed the layers it names (:attr:`SectionConsumer.layers`, which
    may lie outside the report's selection) by the report's ONE pass, and
    reaches the builder as ``ctx.consumers[key]``.
    """
    if not key or not all(ch.isalnum() or ch == "-" for ch in key):
        raise BadArgument(f"section key {key!r}: use letters, digits and '-'")

    def decorate(build: SectionBuilder) -> SectionBuilder:
        _SECTIONS[key] = Section(key, title, float(order), build, default, consumer)
        return build

    return decorate


def unregister_section(key: str) -> None:
    """Remove a section added with :func:`register_section` (unknown keys are ignored)."""
    _SECTIONS.pop(key, None)


def section_keys() -> list[str]:
    """Registered section keys, in page order."""
    return [e.key for e in sorted(_SECTIONS.values(), key=lambda e: e.order)]


def get_section(key: str) -> Section:
    """The registered section ``key`` (a ``KeyError`` if there is none)."""
    return _SECTIONS[key]


def select_sections(sections: Sequence[str] | str | None) -> list[str]:
    """The keys asked for (a list or a comma-separated string; ``None``: every default one), in page order.

    Raises:
        BadArgument: an unknown key (the message lists the known ones).
    """
    every = section_keys()
    if sections is None:
        return [k for k in every if _SECTIONS[k].default]
    if isinstance(sections, str):
        sections = [s.strip() for s in sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in _SECTIONS]
    if unknown:
        raise BadArgument(f"unknown report section {', '.join(map(repr, unknown))}; "
                          f"choose from {', '.join(every)}")
    return [k for k in every if k in set(sections)]
