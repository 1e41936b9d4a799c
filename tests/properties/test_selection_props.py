"""Properties of the layer selection parser (convlens.selection.select).

Any string, against any layer table, gives a sorted list of valid layer
indexes or one of convlens's own errors, never anything else; a selection is
the union of its terms; names, indexes, ranges, kinds and globs pick exactly
the layers they name.
"""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from convlens._errors import BadArgument, ConvlensError, LayerNotFound
from convlens.core.layers import KINDS, LayerInfo
from convlens.selection import KIND_TERMS, blocks, select_indexes

name_chars = st.sampled_from(
    list("abcxyz_019.-/ ") + ["conv", "block", "é", "*", "?", "[", "]", "re:"]
)
names = st.lists(name_chars, min_size=1, max_size=6).map("".join)


@st.composite
def tables(draw, min_size=1) -> list[LayerInfo]:
    """A layer table: input first, then layers of any kind, unique names, some nested (a/b)."""
    n = draw(st.integers(min_size, 12))
    chosen = draw(st.lists(names, min_size=n, max_size=n, unique=True))
    rows = [LayerInfo(index=0, name="input", type="Input", kind="input", output_shape=(32, 32, 3))]
    for i, name in enumerate(chosen, start=1):
        if name == "input":
            name = "input_"
        side = draw(st.sampled_from([32, 16, 8, 4]))
        jump = draw(st.one_of(st.none(), st.sampled_from([1, 2, 4, 8])))
        rows.append(
            LayerInfo(
                index=i,
                name=name,
                type="T",
                kind=draw(st.sampled_from(KINDS[1:])),
                output_shape=draw(st.sampled_from([(side, side, 4), None, (10,)])),
                rf_jump=None if jump is None else (jump, jump),
            )
        )
    return rows


def regexes() -> st.SearchStrategy[str]:
    """Regular expressions good and bad, with repetitions of any size."""
    atom = st.sampled_from(
        [
            "a",
            ".",
            "\\d",
            "[a-c]",
            "[",
            "(",
            ")",
            "\\",
            "|",
            "^",
            "$",
            "conv",
            "(?P<g>x)",
            "(?P<g>y)",
            "\\N{foo}",
            "(?i)",
            "[z-a]",
        ]
    )
    count = st.integers(0, 2**40).map(str)
    rep = st.one_of(
        st.just(""),
        st.sampled_from(["*", "+", "?", "*?"]),
        st.tuples(count, st.sampled_from(["", ","]), st.one_of(st.just(""), count)).map(
            lambda t: "{" + "".join(t) + "}"
        ),
    )
    return st.lists(st.tuples(atom, rep).map("".join), max_size=6).map("".join)


def terms(table: list[LayerInfo]) -> st.SearchStrategy[str]:
    n = len(table)
    return st.one_of(
        st.sampled_from(KIND_TERMS + ("blocks", "ALL", "Conv")),
        st.integers(-n - 2, n + 2).map(str),
        st.tuples(
            st.integers(0, n + 2), st.sampled_from(["-", "..", " - "]), st.integers(0, n + 2)
        ).map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
        st.sampled_from([layer.name for layer in table]),
        st.sampled_from([layer.name.rsplit("/", 1)[-1] for layer in table]),
        st.sampled_from([layer.name for layer in table]).map(lambda s: s[: len(s) // 2] + "*"),
        regexes().map(lambda r: "re:" + r),
        st.text(max_size=12),
    )


def check(result: list[int], table: list[LayerInfo]) -> None:
    assert result == sorted(set(result))
    assert all(isinstance(i, int) and 0 <= i < len(table) for i in result)


@settings(max_examples=200)
@given(table=tables(), spec=st.text(max_size=30))
@example(table=[LayerInfo(0, "input", "Input", "input", (4, 4, 1))], spec="re:a{99999999999}")
@example(
    table=[LayerInfo(0, "input", "Input", "input", (4, 4, 1))], spec="re:" + "(" * 1200 + ")" * 1200
)
@example(table=[LayerInfo(0, "input", "Input", "input", (4, 4, 1))], spec="re:[")
@example(
    table=[
        LayerInfo(0, "input", "Input", "input", (4, 4, 1)),
        LayerInfo(1, "classifier.4", "Conv2d", "conv", (4, 4, 2)),
    ],
    spec="classifier.0",
)
def test_any_string_gives_layers_or_a_convlens_error(table, spec):
    try:
        result = select_indexes(table, spec)
    except ConvlensError as exc:
        assert isinstance(exc, (BadArgument, LayerNotFound))
        message = str(exc)
        assert message and "\n" not in message
        if "; closest: " in message:  # each suggestion once
            close = message.split("; closest: ", 1)[1].split("; run `convlens layers", 1)[0]
            assert len(close.split(", ")) == len(set(close.split(", "))), message
        return
    check(result, table)


@settings(max_examples=150)
@given(data=st.data(), table=tables())
def test_a_selection_is_the_union_of_its_terms(data, table):
    chosen = data.draw(st.lists(terms(table), min_size=1, max_size=4), label="terms")
    parts: set[int] = set()
    failed = None
    for term in chosen:
        try:
            parts.update(select_indexes(table, term))
        except ConvlensError as exc:
            failed = type(exc)
    spec = ",".join(chosen)
    if "," in "".join(chosen) or any(not t.strip() for t in chosen):
        # a term holding a comma is several terms, and a blank one is dropped: only check safety
        try:
            check(select_indexes(table, spec), table)
        except ConvlensError:
            pass
        return
    if failed is not None:
        with pytest.raises(ConvlensError):
            select_indexes(table, spec)
        with pytest.raises(ConvlensError):
            select_indexes(table, chosen)
    else:
        assert select_indexes(table, spec) == select_indexes(table, chosen) == sorted(parts)


def _plain(name: str) -> bool:
    """A name that is a name term: not a kind, index, range, glob or regex."""
    s = name.strip()
    return (
        s == name
        and "," not in name
        and not any(c in name for c in "*?[")
        and not name.startswith("re:")
        and name.lower() not in KIND_TERMS + ("blocks",)
        and not name.lstrip("-").isdigit()
        and not _looks_like_range(name)
    )


def _looks_like_range(name: str) -> bool:
    for sep in ("-", ".."):
        head, _, tail = name.partition(sep)
        if tail and head.strip().isdigit() and tail.strip().isdigit():
            return True
    return False


@settings(max_examples=100)
@given(table=tables(), data=st.data())
def test_names_indexes_ranges_kinds_and_globs_pick_exactly_their_layers(table, data):
    n = len(table)
    layer = data.draw(st.sampled_from(table), label="layer")
    if _plain(layer.name):
        assert select_indexes(table, layer.name) == [layer.index]
    i = data.draw(st.integers(-n, n - 1), label="index")
    assert select_indexes(table, str(i)) == [i % n]
    with pytest.raises(LayerNotFound):
        select_indexes(table, str(n + data.draw(st.integers(0, 5))))
    lo = data.draw(st.integers(0, n - 1), label="lo")
    hi = data.draw(st.integers(lo, n + 3), label="hi")
    assert select_indexes(table, f"{lo}-{hi}") == list(range(lo, min(hi, n - 1) + 1))
    if lo < hi:
        with pytest.raises(BadArgument):
            select_indexes(table, f"{hi}-{lo}")
    kind = data.draw(st.sampled_from(KIND_TERMS), label="kind")
    expected = [t.index for t in table if (t.kind == kind or (kind == "all" and t.kind != "input"))]
    if expected:
        assert select_indexes(table, kind) == expected
    else:
        assert select_indexes(table, kind) == []  # an absent kind is no error: Lens says which kinds exist
    pattern = layer.name[:1] + "*"
    if not any(c in layer.name[:1] for c in "*?[,") and layer.name[:1].strip():
        hits = select_indexes(table, pattern)
        assert layer.index in hits
        assert all(
            fnmatch.fnmatchcase(table[h].name, pattern)
            or fnmatch.fnmatchcase(table[h].name.rsplit("/", 1)[-1], pattern)
            for h in hits
        )
    assert set(blocks(table)) <= {t.index for t in table if t.kind == "conv"}
