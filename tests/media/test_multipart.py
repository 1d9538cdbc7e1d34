"""The MJPEG multipart parser against sloppy streams: any split, garbage, lies, truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watchkeep.media import Frame, MultipartParser, boundary_from_content_type, mjpeg_part

BOUNDARY = "watchkeep-frame"


def jpeg(n: int) -> bytes:
    return b"\xff\xd8" + bytes([n % 251]) * (20 + n % 37) + b"\xff\xd9"


def part(n: int) -> bytes:
    return mjpeg_part(Frame("cam", n, 1000.0 + n, jpeg(n)), BOUNDARY)


def bare_part(n: int) -> bytes:
    """A part without Content-Length, as some cameras send."""
    return b"--%b\r\nContent-Type: image/jpeg\r\n\r\n%b\r\n" % (BOUNDARY.encode(), jpeg(n))


def feed_in_pieces(parser: MultipartParser, stream: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    last = 0
    for cut in [*sorted({min(c, len(stream)) for c in cuts}), len(stream)]:
        out += [p.jpeg for p in parser.feed(stream[last:cut])]
        last = cut
    return out


@given(
    count=st.integers(min_value=1, max_value=12),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
)
def test_any_split_of_the_stream_gives_the_same_parts(count: int, cuts: list[int]) -> None:
    stream = b"".join(part(n) for n in range(count))
    parser = MultipartParser(BOUNDARY)
    assert feed_in_pieces(parser, stream, cuts) == [jpeg(n) for n in range(count)]
    assert (parser.parts, parser.bad_parts, parser.skipped_bytes) == (count, 0, 0)


# Garbage holds no delimiter, and no EOI: after a part without Content-Length, bytes ending
# in an EOI marker cannot be told apart from the part's own JPEG.
@given(
    noise=st.lists(
        st.binary(min_size=1, max_size=40).filter(
            lambda b: b"--" not in b and b"\xff\xd9" not in b
        ),
        min_size=4,
        max_size=4,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=1500), max_size=20),
)
def test_garbage_between_parts_is_skipped_and_counted(noise: list[bytes], cuts: list[int]) -> None:
    stream = noise[0] + part(0) + noise[1] + part(1) + noise[2] + bare_part(2) + noise[3] + part(3)
    parser = MultipartParser(BOUNDARY)
    got = feed_in_pieces(parser, stream, cuts)
    assert got == [jpeg(0), jpeg(1), jpeg(2), jpeg(3)]
    assert parser.bad_parts == 0
    # Line breaks are the format's, garbage is every other byte between parts.
    assert parser.skipped_bytes == sum(len(n) - n.count(b"\r") - n.count(b"\n") for n in noise)


def test_a_part_shorter_than_its_content_length_is_dropped_and_the_next_one_kept() -> None:
    short = part(1).replace(jpeg(1), jpeg(1)[:10])  # says 58 bytes, carries 10
    stream = part(0) + short + part(2) + part(3)
    parser = MultipartParser(BOUNDARY)
    assert [p.jpeg for p in parser.feed(stream)] == [jpeg(0), jpeg(2), jpeg(3)]
    assert parser.bad_parts == 1


def test_a_picture_whose_bytes_hold_the_delimiter_is_kept_whole() -> None:
    # Compressed data can hold any bytes; its Content-Length says where it ends.
    odd = b"\xff\xd8" + b"\r\n--" + BOUNDARY.encode() + b"\r\n" + b"\x07" * 30 + b"\xff\xd9"
    stream = part(0) + mjpeg_part(Frame("cam", 1, 1001.0, odd), BOUNDARY) + part(2)
    parser = MultipartParser(BOUNDARY)
    assert [p.jpeg for p in parser.feed(stream)] == [jpeg(0), odd, jpeg(2)]
    assert parser.bad_parts == 0


def test_truncated_and_foreign_bodies_are_dropped() -> None:
    not_jpeg = (
        b"--%b\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello\r\n"
        % BOUNDARY.encode()
    )
    cut_jpeg = b"--%b\r\n\r\n%b\r\n" % (BOUNDARY.encode(), jpeg(5)[:-2])  # no EOI, no length
    absurd = b"--%b\r\nContent-Length: 99999999999\r\n\r\n" % BOUNDARY.encode()
    stream = part(0) + not_jpeg + part(1) + cut_jpeg + part(2) + absurd + part(3) + part(4)
    parser = MultipartParser(BOUNDARY, max_part_size=1 << 20)
    assert [p.jpeg for p in parser.feed(stream)] == [jpeg(n) for n in range(5)]
    assert parser.bad_parts == 3


def test_a_stream_cut_inside_a_part_leaves_it_pending() -> None:
    parser = MultipartParser(BOUNDARY)
    whole = part(0) + part(1)
    assert [p.jpeg for p in parser.feed(whole[:-20])] == [jpeg(0)]
    assert parser.in_part


def test_endless_garbage_does_not_grow_the_buffer() -> None:
    parser = MultipartParser(BOUNDARY)
    for _ in range(200):
        assert parser.feed(b"\x00" * 10_000) == []
    assert len(parser._buffer) < 100
    assert parser.skipped_bytes > 1_900_000
    assert [p.jpeg for p in parser.feed(part(7))] == [jpeg(7)]


def test_bare_line_feeds_and_dashes_in_the_parameter_are_tolerated() -> None:
    sloppy = b"--myboundary\nContent-Type: image/jpeg\nContent-Length: %d\n\n%b\n" % (
        len(jpeg(1)),
        jpeg(1),
    )
    parser = MultipartParser("--myboundary")  # as in "boundary=--myboundary"
    assert [p.jpeg for p in parser.feed(sloppy * 3)] == [jpeg(1)] * 3


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/x-mixed-replace; boundary=frame", "frame"),
        ('multipart/x-mixed-replace;boundary="a b"', "a b"),
        ("Multipart/X-Mixed-Replace; charset=x; BOUNDARY=--myboundary", "--myboundary"),
        ("image/jpeg", None),
        ("multipart/x-mixed-replace", None),
    ],
)
def test_the_boundary_comes_from_the_content_type(content_type: str, boundary: str | None) -> None:
    assert boundary_from_content_type(content_type) == boundary


@given(
    pieces=st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.sampled_from(
                [
                    part(1),
                    bare_part(2),
                    b"--watchkeep-frame\r\n",
                    b"Content-Length: 5\r\n\r\n",
                    b"\r\n\r\n",
                    b"--watchkeep-frame--",
                ]
            ),
        ),
        max_size=20,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
)
def test_any_input_gives_only_whole_jpegs_and_never_raises(
    pieces: list[bytes], cuts: list[int]
) -> None:
    parser = MultipartParser(BOUNDARY)
    for body in feed_in_pieces(parser, b"".join(pieces), cuts):
        assert body.startswith(b"\xff\xd8")
        assert body.endswith(b"\xff\xd9")
