"""Unit tests of the sans-I/O core (input checks, batch planning, wire encoding, response validation,
reassembly), the settings model and the pickling of errors."""

from __future__ import annotations

import itertools
import json
import pathlib
import pickle
import random

import numpy as np
import pytest
from bad_inputs import BAD_TEXTS
from PIL import Image
from pydantic import ValidationError
from serving_server import InvocationRequest

from clip_client._constants import DEFAULT_EMBEDDING_DIM
from clip_client._core import wire as _wire
from clip_client._core.batching import Batch, BatchPlanner, Collector, EmbedJob, adrive, batch_flow, drive
from clip_client._core.concurrency import CallCancelled, CallContext
from clip_client._core.inputs import check_image_list, check_text, check_text_list
from clip_client._core.wire import BODY_OVERHEAD, encode_body, encode_record, parse_predictions, record_size
from clip_client.errors import (
    APITimeoutError,
    BadRequestError,
    ImageDecodeError,
    InvalidInputError,
    PayloadTooLargeError,
    RateLimitError,
    ResponseFormatError,
)
from clip_client.types import Settings

# --------------------------------------------------------------------------------------------------
# Input checks


def test_check_text_list_refuses_a_bare_string_and_points_to_embed_text():
    with pytest.raises(TypeError, match=r"embed_text\(text\)"):
        check_text_list("a red car")


@pytest.mark.parametrize("value", [b"abc", bytearray(b"abc"), 42, None])
def test_check_text_list_refuses_non_lists(value):
    with pytest.raises(TypeError, match="list of strings"):
        check_text_list(value)


def test_check_text_list_accepts_any_iterable_and_keeps_order():
    assert check_text_list(["a", "b"]) == ["a", "b"]
    assert check_text_list(t for t in ("x", "y", "z")) == ["x", "y", "z"]
    assert check_text_list(("é", "日本", "🙂")) == ["é", "日本", "🙂"]
    assert check_text_list([]) == []


@pytest.mark.parametrize("kind", list(BAD_TEXTS))
@pytest.mark.parametrize("position", [0, 2])
def test_check_text_list_names_the_index_of_a_bad_text(kind, position):
    bad, fragment = BAD_TEXTS[kind].value, BAD_TEXTS[kind].says
    texts: list[object] = ["ok one", "ok two", "ok three"]
    texts[position] = bad
    with pytest.raises(InvalidInputError) as info:
        check_text_list(texts)
    err = info.value
    assert type(err) is BAD_TEXTS[kind].error
    assert err.index == position
    assert fragment in str(err)
    assert str(err).startswith(f"input {position}: ")
    assert isinstance(err, ValueError)  # callers catching ValueError still catch it


def test_check_text_reports_the_surrogate_position_and_allows_none_index():
    with pytest.raises(InvalidInputError, match="character 3") as info:
        check_text("abc\udcff", None)
    assert info.value.index is None
    assert not str(info.value).startswith("input")


def test_first_bad_text_is_reported():
    with pytest.raises(InvalidInputError) as info:
        check_text_list(["fine", "", 5])
    assert info.value.index == 2  # an empty text is a text: the model embeds it


@pytest.mark.parametrize("text", ["", " ", "\t\n", "\u3000"])
def test_empty_and_whitespace_texts_are_texts(text):
    assert check_text_list(["a", text]) == ["a", text]


@pytest.mark.parametrize(
    "single",
    [
        "photo.jpg",
        pathlib.Path("photo.jpg"),
        b"\x89PNG....",
        bytearray(b"\xff\xd8"),
        memoryview(b"\xff\xd8"),
        Image.new("RGB", (4, 4)),
        np.zeros((4, 4, 3), dtype=np.uint8),
        np.zeros((4, 4), dtype=np.uint8),
    ],
    ids=["str", "path", "bytes", "bytearray", "memoryview", "pil", "array-hwc", "array-hw"],
)
def test_check_image_list_refuses_a_single_image(single):
    with pytest.raises(TypeError, match=r"embed_image\(image\)"):
        check_image_list(single)


def test_check_image_list_refuses_non_iterables():
    with pytest.raises(TypeError, match="got int"):
        check_image_list(12)


def test_check_image_list_accepts_lists_generators_and_stacks():
    paths = ["a.png", "b.png"]
    assert check_image_list(paths) is paths
    assert check_image_list(p for p in paths) == paths
    stack = np.arange(2 * 3 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 3)
    items = check_image_list(stack)
    assert len(items) == 2
    np.testing.assert_array_equal(items[1], stack[1])


# --------------------------------------------------------------------------------------------------
# Wire encoding

TRICKY_TEXTS = [
    "plain",
    'she said "hi"',
    "back\\slash \\n not a newline",
    "line one\nline two\r\n\ttabbed",
    "ünïcödé, 日本語, Ελληνικά",
    "emoji 🚗🐕‍🦺 and flags 🇫🇷",
    "control \x00\x1f chars",
    "</script><!-- -->",
    " ",
]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_encode_record_round_trips_text(text):
    record = encode_record(text)
    body = encode_body([record])
    assert json.loads(body) == {"dataframe_records": [{"input": text}]}
    record.decode("ascii")  # non-ASCII is escaped, so the byte count is the wire count
    assert len(body) == BODY_OVERHEAD + record_size(record)


def test_encode_record_embeds_base64_bytes_verbatim():
    b64 = b"iVBORw0KGgoAAAANSUhEUg+/="
    assert encode_record(b64) is b64  # no copy: the body join is the only one
    assert encode_body([b64]) == b'{"dataframe_records":[{"input":"iVBORw0KGgoAAAANSUhEUg+/="}]}'


def test_encode_body_is_exactly_dataframe_records():
    body = encode_body([encode_record(t) for t in TRICKY_TEXTS])
    doc = json.loads(body)
    assert doc == {"dataframe_records": [{"input": t} for t in TRICKY_TEXTS]}
    assert [r.input for r in InvocationRequest.model_validate_json(body).dataframe_records] == TRICKY_TEXTS
    assert json.loads(encode_body([])) == {"dataframe_records": []}
    assert len(encode_body([])) == BODY_OVERHEAD


# --------------------------------------------------------------------------------------------------
# Batch planning


def plan(planner: BatchPlanner, records: list[bytes]) -> list[Batch]:
    batches = []
    for i, record in enumerate(records):
        closed = planner.add(i, record, record_size(record))
        if closed is not None:
            batches.append(closed)
    last = planner.flush()
    if last is not None:
        batches.append(last)
    assert planner.flush() is None
    return batches


def test_planner_by_count():
    batches = plan(BatchPlanner(3, None), [b"x"] * 8)
    assert [b.indices for b in batches] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert [len(b) for b in batches] == [3, 3, 2]


def test_planner_add_returns_the_batch_it_closed():
    planner = BatchPlanner(2, None)
    assert planner.add(0, "a") is None
    assert planner.add(1, "b") is None
    closed = planner.add(2, "c")
    assert closed is not None
    assert closed.indices == [0, 1]
    assert closed.payloads == ["a", "b"]
    assert planner.flush().payloads == ["c"]


def test_planner_with_no_items_makes_no_batch():
    assert plan(BatchPlanner(4, 10_000), []) == []


def test_planner_by_bytes_keeps_every_body_under_the_limit_and_exact():
    records = [encode_record("x" * n) for n in (10, 50, 5, 200, 1, 1, 1, 90, 300, 7)]
    max_bytes = 400
    batches = plan(BatchPlanner(100, max_bytes), records)
    assert len(batches) > 1
    for batch in batches:
        body = encode_body(batch.payloads)
        assert len(body) <= max_bytes
        assert batch.nbytes == len(body)
    # no batch was closed early: the next record would not have fit
    for batch, following in itertools.pairwise(batches):
        first_next = records[following.indices[0]]
        assert len(encode_body([*batch.payloads, first_next])) > max_bytes


def test_planner_accepts_a_body_of_exactly_max_bytes():
    record = encode_record("y" * 100)
    limit = len(encode_body([record]))
    batches = plan(BatchPlanner(10, limit), [record, record])
    assert [b.indices for b in batches] == [[0], [1]]
    two = len(encode_body([record, record]))
    batches = plan(BatchPlanner(10, two), [record, record, record])
    assert [b.indices for b in batches] == [[0, 1], [2]]


def test_planner_refuses_an_item_too_large_alone_naming_its_index():
    small = encode_record("fine")
    huge = encode_record("z" * 2000)
    planner = BatchPlanner(10, 1024)
    planner.add(0, small, record_size(small))
    with pytest.raises(InvalidInputError) as info:
        planner.add(1, huge, record_size(huge))
    err = info.value
    assert err.index == 1
    exact = len(encode_body([huge]))
    assert f"{exact:,}-byte request" in str(err)
    assert "max_request_bytes=1,024" in str(err)
    # an item one byte over the limit is refused, one that exactly fits is not
    with pytest.raises(InvalidInputError):
        BatchPlanner(10, exact - 1).add(0, huge, record_size(huge))
    assert BatchPlanner(10, exact).add(0, huge, record_size(huge)) is None


def test_planner_property_random_inputs():
    """Random sizes and limits: order kept, each index once, both limits hold, no early close."""
    rng = random.Random(20240601)
    for _ in range(300):
        n = rng.randrange(0, 60)
        max_items = rng.randrange(1, 12)
        max_bytes = rng.choice([None, rng.randrange(BODY_OVERHEAD + 20, 2000)])
        texts = ["w" * rng.randrange(1, 120) for _ in range(n)]
        records = [encode_record(t) for t in texts]
        if max_bytes is not None:
            records = [r for r in records if len(encode_body([r])) <= max_bytes]
        batches = plan(BatchPlanner(max_items, max_bytes), records)
        flat = [i for b in batches for i in b.indices]
        assert flat == list(range(len(records)))
        for b in batches:
            assert 1 <= len(b) <= max_items
            assert b.payloads == [records[i] for i in b.indices]
            if max_bytes is not None:
                assert len(encode_body(b.payloads)) <= max_bytes
        for b, nxt in itertools.pairwise(batches):
            would_be = [*b.payloads, records[nxt.indices[0]]]
            assert len(b) == max_items or (max_bytes is not None and len(encode_body(would_be)) > max_bytes)


# --------------------------------------------------------------------------------------------------
# Response validation


@pytest.fixture(params=["orjson", "stdlib"])
def json_backend(request, monkeypatch):
    """parse_predictions must behave the same with and without the optional orjson."""
    if request.param == "stdlib":
        monkeypatch.setattr(_wire, "_orjson", None)
    elif _wire._orjson is None:
        pytest.skip("orjson not installed")
    return request.param


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


def test_parse_list_rows(json_backend):
    arr = parse_predictions(dumps({"predictions": [[1, 2.5, -3], [0.1, 0.2, 0.3]]}), 2)
    assert arr.dtype == np.float32
    assert arr.shape == (2, 3)
    np.testing.assert_array_equal(arr[0], np.array([1, 2.5, -3], dtype=np.float32))


def test_parse_object_rows(json_backend):
    body = dumps({"predictions": [{"embedding": [1.0, 2.0]}, {"embedding": [3.0, 4.0]}]})
    np.testing.assert_array_equal(parse_predictions(body, 2), [[1, 2], [3, 4]])


def test_parse_column_oriented_predictions(json_backend):
    body = dumps({"predictions": {"embedding": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}})
    arr = parse_predictions(body, 3)
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, [[1, 2], [3, 4], [5, 6]])


def test_parse_ignores_extra_top_level_keys(json_backend):
    body = dumps({"predictions": [[1.0]], "model_version": "3"})
    np.testing.assert_array_equal(parse_predictions(body, 1), [[1.0]])


@pytest.mark.parametrize(
    ("body", "rows", "fragment"),
    [
        (dumps({"predictions": [[1.0, 2.0]]}), 2, "sent 2 records but got 1 rows back"),
        (dumps({"predictions": [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]]}), 2, "got 3 rows back"),
        (dumps({"predictions": [[1.0, 2.0], [1.0]]}), 2, "not equal-length"),
        (dumps({"predictions": [[1.0, "x"]]}), 1, "not equal-length lists of numbers"),
        (dumps({"predictions": [["0.1", "0.2"]]}), 1, "lists of numbers (they hold strings)"),
        (dumps({"predictions": [[True, False]]}), 1, "lists of numbers (they hold booleans)"),
        (dumps({"predictions": [[1.0, None]]}), 1, "row 0 holds NaN"),
        (dumps({"predictions": [1.0, 2.0]}), 2, "2-D"),
        (dumps({"predictions": [[]]}), 1, "2-D"),
        (b'{"predictions": [[1.0, NaN]]}', 1, "row 0 holds NaN"),  # bare NaN, as Python's json writes it
        pytest.param(
            dumps({"predictions": [[0.5], [1e39]]}),
            2,
            "row 1 holds NaN or infinite values",
            marks=pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
        ),
        (b"upstream connect error", 1, "not JSON (starts with 'upstream connect error')"),
        (b"<html>\n<body>Bad Gateway</body></html>", 1, "not JSON (starts with '<html>"),
        (b"", 1, "not JSON"),
        (
            dumps({"error_code": "X", "message": "m"}),
            1,
            "no 'predictions' key (keys: ['error_code', 'message'])",
        ),
        (dumps([[1.0, 2.0]]), 1, "JSON list, expected an object with 'predictions'"),
        (dumps("hello"), 1, "JSON str"),
        (dumps({"predictions": "oops"}), 1, "'predictions' is a str"),
        (dumps({"predictions": {"a": [[1.0]], "b": [[2.0]]}}), 1, "'predictions' is a dict"),
        (dumps({"predictions": [{"a": [1.0], "b": [2.0]}]}), 1, "row 0 is not a list of floats"),
        (dumps({"predictions": [{"e": [1.0]}, [2.0]]}), 2, "row 1 is not a list of floats"),
    ],
    ids=[
        "too-few-rows",
        "too-many-rows",
        "ragged",
        "strings",
        "numbers-as-strings",
        "booleans",
        "nulls",
        "flat-list",
        "empty-row",
        "nan-literal",
        "overflow-inf",
        "plain-text",
        "html",
        "empty-body",
        "error-object",
        "json-list",
        "json-string",
        "predictions-str",
        "predictions-multi-key-dict",
        "row-multi-key",
        "mixed-rows",
    ],
)
def test_parse_refuses_malformed_answers(json_backend, body, rows, fragment):
    with pytest.raises(ResponseFormatError) as info:
        parse_predictions(body, rows, endpoint="clip-text-embedding", request_id="req-9")
    message = str(info.value)
    assert fragment in message
    assert message.startswith("endpoint 'clip-text-embedding': ")
    assert "[request_id=req-9]" in message
    assert message.endswith(ResponseFormatError.hint)
    assert info.value.endpoint == "clip-text-embedding"
    assert info.value.request_id == "req-9"


def test_parse_nan_names_the_row_with_stdlib_json(monkeypatch):
    monkeypatch.setattr(_wire, "_orjson", None)
    with pytest.raises(ResponseFormatError, match="row 1 holds NaN"):
        parse_predictions(b'{"predictions": [[1.0], [NaN]]}', 2)
    with pytest.raises(ResponseFormatError, match="row 0 holds NaN or infinite"):
        parse_predictions(b'{"predictions": [[Infinity], [1.0]]}', 2)


def test_parse_excerpt_of_a_long_body_is_short():
    body = b"<html>" + b"x" * 10_000 + b"</html>"
    with pytest.raises(ResponseFormatError) as info:
        parse_predictions(body, 1)
    assert len(info.value.message) < 300  # the excerpt; the advice that follows is fixed text


# --------------------------------------------------------------------------------------------------
# Reassembly


def planned_job(total: int, batch_size: int, **kwargs) -> tuple[EmbedJob, list[Batch]]:
    job = EmbedJob(BatchPlanner(batch_size, None), **kwargs)
    batches = [b for i in range(total) if (b := job.add(i, f"item{i}")) is not None]
    if (last := job.flush()) is not None:
        batches.append(last)
    return job, batches


def rows_for(indices: list[int], dim: int = 3) -> np.ndarray:
    return np.array([[i, i * 10, -i] for i in indices], dtype=np.float32)[:, :dim]


def collect(job: EmbedJob, total: int, dim: int | None = None) -> np.ndarray:
    out = Collector(total)
    for index, row, _ in job.ready(final=True):
        out.put(index, row)
    return out.result(dim)


def test_job_reassembles_out_of_order_completions():
    job, batches = planned_job(10, 3)
    emitted = []
    for k in [2, 0, 3, 1]:
        job.settle([(batches[k], rows_for(batches[k].indices))])
        emitted.extend(i for i, _, _ in job.ready())
    # Rows come out strictly in input order, each as soon as every row before it is done.
    assert emitted == list(range(10))
    assert job.emitted == 10


def test_job_holds_rows_until_their_turn():
    job, batches = planned_job(6, 2)
    job.settle([(batches[2], rows_for(batches[2].indices))])
    assert list(job.ready()) == []
    job.settle([(batches[0], rows_for(batches[0].indices))])
    assert [i for i, _, _ in job.ready()] == [0, 1]
    job.settle([(batches[1], rows_for(batches[1].indices))])
    out = [(i, row) for i, row, _ in job.ready()]
    assert [i for i, _ in out] == [2, 3, 4, 5]
    np.testing.assert_array_equal(np.stack([r for _, r in out]), rows_for([2, 3, 4, 5]))


def test_job_handles_non_consecutive_indices():
    job = EmbedJob(BatchPlanner(4, None))
    job.settle([(Batch(indices=[3, 1]), rows_for([3, 1]))])
    job.settle([(Batch(indices=[0, 2]), rows_for([0, 2]))])
    np.testing.assert_array_equal(collect(job, 4), rows_for([0, 1, 2, 3]))


def test_job_refuses_a_width_change():
    job, batches = planned_job(4, 2, endpoint="ep")
    job.accept(batches[0], np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ResponseFormatError, match=r"width changed between requests \(3 then 4\)") as info:
        job.accept(batches[1], np.ones((2, 4), dtype=np.float32))
    assert info.value.endpoint == "ep"


def test_job_refuses_a_wrong_row_count():
    job, batches = planned_job(4, 2)
    with pytest.raises(ResponseFormatError, match=r"sent 2 inputs but got an array of shape \(1, 3\)"):
        job.accept(batches[0], np.ones((1, 3), dtype=np.float32))


def test_collector_refuses_to_return_a_partial_result():
    job, batches = planned_job(4, 2)
    job.settle([(batches[0], rows_for(batches[0].indices))])
    with pytest.raises(RuntimeError, match="2 of 4 rows"):
        collect(job, 4)


def test_job_normalize_gives_unit_rows_and_keeps_zero_rows_finite():
    job, batches = planned_job(3, 3, normalize=True)
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [-2e-4, 1e-4]], dtype=np.float32)
    job.settle([(batches[0], rows)])
    out = collect(job, 3)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(np.linalg.norm(out[[0, 2]], axis=1), 1.0, rtol=1e-5)
    assert out.dtype == np.float32
    raw_job, raw_batches = planned_job(3, 3)
    raw_job.settle([(raw_batches[0], rows)])
    np.testing.assert_array_equal(collect(raw_job, 3), rows)


def test_empty_collector_returns_an_empty_array():
    out = Collector(0).result()
    assert out.shape == (0, DEFAULT_EMBEDDING_DIM)
    assert out.dtype == np.float32
    assert Collector(0).result(24).shape == (0, 24)


def test_job_reports_progress_and_closes_it():
    class Bar:
        def __init__(self):
            self.n = 0
            self.closed = False

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    bar = Bar()
    job, batches = planned_job(5, 2, progress=bar)
    for b in reversed(batches):
        job.settle([(b, rows_for(b.indices))])
    job.close()
    assert bar.n == 5
    assert bar.closed


def test_input_failure_raises_by_default_and_is_marked_with_mark():
    bad = InvalidInputError("broken", index=1)
    job = EmbedJob(BatchPlanner(4, None))
    with pytest.raises(InvalidInputError) as info:
        job.input_failed(1, bad)
    assert info.value is bad

    job = EmbedJob(BatchPlanner(4, None), mark=True)
    job.add(0, "a")
    job.input_failed(1, bad)
    job.add(2, "c")
    batch = job.flush()
    assert batch is not None
    assert batch.indices == [0, 2]
    job.settle([(batch, rows_for([0, 2]))])
    out = list(job.ready(final=True))
    assert [i for i, _, _ in out] == [0, 1, 2]
    assert np.isnan(out[1][1]).all()
    assert out[1][1].shape == (3,)
    assert out[1][2] is bad
    assert [(f.index, f.error) for f in job.failures] == [(1, bad)]


def test_a_failed_row_waits_for_the_width_unless_final():
    job = EmbedJob(BatchPlanner(4, None), mark=True, dim_hint=7)
    job.input_failed(0, InvalidInputError("x", index=0))
    assert list(job.ready()) == []  # the NaN row's width is not known yet
    rows = list(job.ready(final=True))
    assert rows[0][1].shape == (7,)


# --------------------------------------------------------------------------------------------------
# One batch's fate: split when too large, isolate a bad input


def too_large() -> PayloadTooLargeError:
    return PayloadTooLargeError("too big", status_code=413, endpoint="ep")


def fake_send(limit: int, bad: set[int] = frozenset()):
    """A send that refuses batches over ``limit`` items and answers 400 for batches holding ``bad``."""
    sent: list[list[int]] = []

    def send(batch: Batch) -> np.ndarray:
        sent.append(list(batch.indices))
        if len(batch) > limit:
            raise too_large()
        if bad & set(batch.indices):
            raise BadRequestError("bad input", status_code=400, endpoint="ep")
        return rows_for(batch.indices)

    return send, sent


def test_batch_flow_splits_a_refused_batch_down_to_what_fits():
    send, sent = fake_send(limit=2)
    splits = []
    pieces = drive(
        batch_flow(Batch(list(range(7)), list(range(7))), mark=False, on_split=lambda: splits.append(1)), send
    )
    assert [i for b, _ in pieces for i in b.indices] == list(range(7))
    for b, rows in pieces:
        np.testing.assert_array_equal(rows, rows_for(b.indices))
    assert sent[0] == list(range(7))
    assert len(splits) > 0
    assert all(len(b) <= 2 for b, _ in pieces)


def test_batch_flow_single_item_too_large_names_its_index():
    send, _ = fake_send(limit=0)
    with pytest.raises(PayloadTooLargeError) as info:
        drive(batch_flow(Batch([5, 6], ["a", "b"]), mark=False, on_split=lambda: None), send)
    assert info.value.index == 5
    assert str(info.value).startswith("input 5: ")


def test_batch_flow_raise_mode_does_not_split_a_400():
    send, sent = fake_send(limit=10, bad={2})
    with pytest.raises(BadRequestError) as info:
        drive(batch_flow(Batch([0, 1, 2, 3], list("abcd")), mark=False, on_split=lambda: None), send)
    assert sent == [[0, 1, 2, 3]]
    assert info.value.index is None


def test_batch_flow_mark_mode_isolates_the_input_a_400_was_about():
    send, _ = fake_send(limit=10, bad={2})
    pieces = drive(batch_flow(Batch([0, 1, 2, 3], list("abcd")), mark=True, on_split=lambda: None), send)
    failed = [(b.indices, e) for b, e in pieces if isinstance(e, Exception)]
    assert len(failed) == 1
    assert failed[0][0] == [2]
    assert failed[0][1].index == 2
    ok = sorted(i for b, r in pieces if not isinstance(r, Exception) for i in b.indices)
    assert ok == [0, 1, 3]


def test_batch_flow_mark_mode_marks_a_whole_batch_on_other_errors():
    def send(batch: Batch) -> np.ndarray:
        raise RateLimitError("slow down", status_code=429, endpoint="ep")

    pieces = drive(batch_flow(Batch([0, 1], ["a", "b"]), mark=True, on_split=lambda: None), send)
    assert len(pieces) == 1
    assert isinstance(pieces[0][1], RateLimitError)


async def test_adrive_runs_the_same_flow():
    send, _ = fake_send(limit=2)

    async def asend(batch: Batch) -> np.ndarray:
        return send(batch)

    pieces = await adrive(
        batch_flow(Batch(list(range(5)), list(range(5))), mark=False, on_split=lambda: None), asend
    )
    assert [i for b, _ in pieces for i in b.indices] == list(range(5))


def test_call_context_deadline_and_cancel():
    ctx = CallContext(deadline=0.0)
    with pytest.raises(APITimeoutError, match="deadline"):
        ctx.check("ep")
    ctx = CallContext()
    ctx.check()  # no deadline: never expires
    assert ctx.remaining() is None
    ctx.cancelled.set()
    with pytest.raises(CallCancelled):
        ctx.check()
    with pytest.raises(CallCancelled):
        ctx.sleep(10)  # wakes at once when cancelled


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"retry_deadline": 0}, "retry_deadline"),
        ({"timeout": 0}, "timeout"),
        ({"max_request_bytes": 10}, "max_request_bytes"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"image_format": "gif"}, "image_format"),
        ({"text_endpoint": "a/b"}, "text_endpoint"),
        ({"image_endpoint": " padded "}, "image_endpoint"),
        ({"text_endpoint": ""}, "text_endpoint"),
        ({"bacth_size": 4}, "bacth_size"),
    ],
)
def test_settings_validation_names_the_field(kwargs, field):
    with pytest.raises(ValidationError) as info:
        Settings(**kwargs)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_settings_unknown_keyword_is_refused_as_extra():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Settings(unknown=1)


@pytest.mark.parametrize(
    ("given", "stored"), [("jpg", "jpeg"), ("JPG", "jpeg"), ("JPEG", "jpeg"), ("PNG", "png")]
)
def test_settings_image_format_aliases(given, stored):
    assert Settings(image_format=given).image_format == stored


def test_settings_merged_overrides_and_validates():
    base = Settings(batch_size=8, normalize=False)
    merged = base.merged(batch_size=2, normalize=True, progress=None)
    assert (merged.batch_size, merged.normalize, merged.progress) == (2, True, False)
    assert (base.batch_size, base.normalize) == (8, False)  # the original is untouched
    assert merged.text_endpoint == base.text_endpoint
    assert base.merged() is base
    assert base.merged(batch_size=None) is base
    assert base.merged(image_format="jpg").image_format == "jpeg"
    with pytest.raises(ValidationError, match="batch_size"):
        base.merged(batch_size=0)
    with pytest.raises(ValidationError):
        base.merged(nonsense=1)


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        Settings().batch_size = 3  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Errors cross process boundaries


def _rate_limited() -> RateLimitError:
    return RateLimitError(
        "Exceeded",
        status_code=429,
        error_code="REQUEST_LIMIT_EXCEEDED",
        request_id="r-1",
        endpoint="clip-text-embedding",
        retry_after=2.0,
        attempts=4,
    )


@pytest.mark.parametrize(
    "err",
    [
        InvalidInputError("text is empty", index=3),
        InvalidInputError("bad", index=None, path="/tmp/a.png"),
        ImageDecodeError("cannot identify image file", index=7, path="/data/x.jpg"),
        _rate_limited(),
        APITimeoutError("request timed out (ReadTimeout)", endpoint="clip-image-embedding", attempts=3),
        ResponseFormatError("sent 2 records but got 1 rows back", endpoint="ep", request_id="r-2"),
    ],
    ids=["invalid-input", "invalid-input-path", "image-decode", "rate-limit", "timeout", "response-format"],
)
def test_errors_survive_pickling(err):
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert str(clone) == str(err)
    assert clone.args == err.args
    assert vars(clone) == vars(err)


def test_pickled_errors_keep_their_attributes():
    clone = pickle.loads(pickle.dumps(_rate_limited()))
    assert (clone.status_code, clone.error_code, clone.request_id, clone.endpoint) == (
        429,
        "REQUEST_LIMIT_EXCEEDED",
        "r-1",
        "clip-text-embedding",
    )
    assert (clone.retry_after, clone.attempts, clone.message) == (2.0, 4, "Exceeded")
    assert "gave up after 4 attempts" in str(clone)

    decode = pickle.loads(pickle.dumps(ImageDecodeError("truncated", index=7, path="/x.jpg")))
    assert (decode.index, decode.path, decode.reason) == (7, "/x.jpg", "truncated")
    assert isinstance(decode, InvalidInputError)
    assert isinstance(decode, ValueError)
