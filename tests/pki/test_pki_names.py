"""Host-name and duration parsing (pure), tested with Hypothesis.

Host names are checked against an independent oracle, a regular expression written from
RFC 1123 as certificates need it, over arbitrary text; durations round-trip through
`format_duration` and `parse_duration`.
"""

from __future__ import annotations

import datetime as dt
import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from watchkeep._names import format_duration, parse_duration, validate_host_name
from watchkeep.errors import InvalidDuration, InvalidHostName

LDH = string.ascii_letters + string.digits + "-"
ALNUM = string.ascii_letters + string.digits

# RFC 1123 labels; 253 characters at most (plus one optional trailing dot); and not made of
# digits only, which would be an IPv4 address (those go in --ip).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_NAME_ORACLE = re.compile(
    rf"(?=[^\n]{{1,253}}\.?\Z)(?!(?:[0-9]+\.)*[0-9]+\.?\Z){_LABEL}(?:\.{_LABEL})*\.?\Z"
)

labels = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(ALNUM),
    st.text(LDH, max_size=61),
    st.text(ALNUM, max_size=1),
).filter(lambda label: not label.endswith("-"))

host_names = (
    st.lists(labels, min_size=1, max_size=6)
    .map(".".join)
    .filter(lambda name: len(name) <= 253 and not all(p.isdigit() for p in name.split(".")))
)


@given(host_names, st.booleans())
def test_valid_host_names_come_back_in_lower_case(name: str, trailing_dot: bool) -> None:
    text = name + "." if trailing_dot else name
    assert HOST_NAME_ORACLE.match(text)
    assert validate_host_name(text) == name.lower()


FAULTS = [" ", "_", "*", "!", "/", ":", "@", "é", "\t", "\n", "\x00", "\u0131"]


@given(host_names, st.data())
def test_a_valid_name_with_one_fault_is_refused(name: str, data: st.DataObject) -> None:
    fault = data.draw(
        st.sampled_from(
            ["bad character", "empty label", "leading dot", "long label", "long name",
             "edge hyphen", "numeric"]
        )
    )  # fmt: skip
    labels_of = name.split(".")
    if fault == "bad character":
        at = data.draw(st.integers(0, len(name)))
        bad = name[:at] + data.draw(st.sampled_from(FAULTS)) + name[at:]
    elif fault == "empty label":
        at = data.draw(st.integers(0, len(labels_of) - 1))
        bad = (
            ".".join([*labels_of[:at], "", *labels_of[at:]]) if len(labels_of) > 1 else name + ".."
        )
    elif fault == "leading dot":
        bad = "." + name
    elif fault == "long label":
        bad = "a" * 64 + "." + name
    elif fault == "long name":
        bad = ".".join([name, *["abcdefghi"] * 26])[:300].rstrip(".-")
    elif fault == "edge hyphen":
        bad = data.draw(st.sampled_from(["-" + name, name + "-", name.replace(".", "-.", 1)]))
        if bad == name:
            bad = "-" + name
    else:
        bad = ".".join(str(len(p)) for p in labels_of)
    assert not HOST_NAME_ORACLE.match(bad), bad
    with pytest.raises(InvalidHostName):
        validate_host_name(bad)


@given(st.text(LDH + ". _*é\t\n", max_size=80) | host_names.map(lambda n: n.upper()))
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61)  # exactly 253
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".")
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62)  # 254
@example("1.2.3.4")
@example("1.2.3.x4")
@example("a..")
def test_validator_agrees_with_the_rfc_1123_oracle(text: str) -> None:
    if HOST_NAME_ORACLE.match(text):
        assert validate_host_name(text) == text.removesuffix(".").lower()
    else:
        with pytest.raises(InvalidHostName):
            validate_host_name(text)


# -- durations ----------------------------------------------------------------------------

UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}
LONGEST = dt.timedelta(days=100 * 366)


@given(
    st.integers(1, 10**10 - 1),
    st.sampled_from(sorted(UNIT_SECONDS)),
    st.sampled_from(["", " ", "\t"]),
    st.booleans(),
)
def test_parse_duration_reads_number_and_unit(value: int, unit: str, pad: str, upper: bool) -> None:
    text = f"{pad}{value}{unit.upper() if upper else unit}{pad}"
    seconds = value * UNIT_SECONDS[unit]
    if seconds <= LONGEST.total_seconds():
        assert parse_duration(text) == dt.timedelta(seconds=seconds)
    else:
        with pytest.raises(InvalidDuration):
            parse_duration(text)


@given(st.integers(1, int(LONGEST.total_seconds())))
@example(1_000_000_001)  # more seconds than nine digits hold, yet shorter than 100 years
@example(int(LONGEST.total_seconds()))
def test_format_duration_round_trips(seconds: int) -> None:
    delta = dt.timedelta(seconds=seconds)
    text = format_duration(delta)
    assert re.fullmatch(r"[1-9][0-9]*[dhms]", text), text
    assert parse_duration(text) == delta


@given(
    st.text(string.printable, max_size=12).filter(
        lambda t: not re.fullmatch(r"[0-9]{1,10}[smhdw]?", t.strip().lower())
    )
    | st.sampled_from(
        ["0", "0d", "-5d", "1.5d", "30 d", "d", "5y", "36601d", "5229w", "99999999999s"]
    )
)
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(InvalidDuration):
        parse_duration(text)
