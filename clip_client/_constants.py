"""Defaults, in one place, so that the documentation and the code cannot drift apart."""

from __future__ import annotations

from typing import Final

DEFAULT_TEXT_ENDPOINT = "clip-text-embedding"
DEFAULT_IMAGE_ENDPOINT = "clip-image-embedding"
ENDPOINT_NAME_PATTERN = r"[A-Za-z0-9_-]{1,256}"
"""A Databricks serving endpoint's name: letters, digits, '-' and '_', at most 256. Anything else would
change the URL a request (and its token) goes to ("a?b", "a#b", ".."). The clients and deploy check it.
"""

DEFAULT_BATCH_SIZE = 32
"""Records per request. A Small endpoint runs a handful of requests at once; 32 records keeps each one
well inside the 297 s model limit while amortising the per-request overhead.
"""

DEFAULT_MAX_REQUEST_BYTES = 15_000_000
"""Databricks Model Serving rejects bodies over 16 MB. Stay a margin under it, for proxies that
count headers too and for either reading of "MB".
"""

DEFAULT_MAX_CONCURRENCY = 5
"""Requests in flight per client. A "Small" endpoint serves about four at once; one more waits in the
endpoint's queue, so no slot idles while the client parses an answer and sends the next request
(90% of the endpoint's ceiling at 4, 97% at 5: benchmarks/throughput.py). 429s lower it at once.
"""
MAX_CONCURRENCY = 256
"""The highest `max_concurrency` there is, given or chosen by `"auto"` (a Large endpoint with
explicit provisioned concurrency can serve hundreds at once; past this, requests only queue).
"""

DEFAULT_MAX_RETRIES = 8
"""Retries after the first attempt, for connection errors, timeouts, 408, 429 and 5xx (a malformed
200 and a host name that does not resolve get one at most, below).
"""
# Exponential backoff: first wait and cap, in seconds; each wait is half fixed, half random.
RETRY_INITIAL_WAIT = 0.5
RETRY_MAX_WAIT = 30.0
RETRY_AFTER_MAX = 120.0
"""A server's Retry-After is honoured up to this many seconds."""
DEFAULT_RETRY_DEADLINE = 900.0
"""Total time one batch may spend on retries before the last error is raised."""

# The model may run for 297 s; leave room for queueing and transfer. One attempt's whole time:
# connecting, sending the body and receiving the complete answer.
DEFAULT_TIMEOUT = 330.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEADLINE_GRACE = 0.25
"""After a call's deadline, how long a sync call waits for its worker threads to report the deadline
themselves (with what they were doing) before it raises on its own: a worker can be stuck where
no bound reaches (a DNS lookup, a credentials refresh, the headers of an injected http client).
"""

MALFORMED_ANSWER_RETRIES = 1
"""Retries one batch may spend on a 200 whose body is not the embeddings asked for: a gateway's
HTML page is transient, a model that answers the wrong shape answers it again.
"""
NAME_RESOLUTION_RETRIES = 1
"""Retries one batch may spend on a host name that does not resolve: a wrong DATABRICKS_HOST or
profile, or a VPN that is down, does not fix itself in a second; one covers a resolver's hiccup.
"""

# databricks-sdk's own bounds for what `Config()` does on the network while the client is built
# (the host-metadata probe), used when neither the caller nor the profile set them. The SDK's
# defaults (300 s of retries, 60 s per request) hold a wrong host for about five minutes; the probe
# is best-effort (the SDK falls back to the explicit configuration when it fails).
CONFIG_RETRY_TIMEOUT_SECONDS = 10
CONFIG_HTTP_TIMEOUT_SECONDS = 10.0

# CLIP ViT-L/14 input resolution.
DEFAULT_IMAGE_SIZE = 224
DEFAULT_IMAGE_FORMAT: Final = "png"
DEFAULT_FAST_DECODE = False
DEFAULT_NORMALIZE = False
DEFAULT_PROGRESS = False
# 16-bit images clip at 255 as the served processor does (types.HighBitDepth).
DEFAULT_HIGH_BIT_DEPTH: Final = "clip"
DEFAULT_JPEG_QUALITY = 95
DEFAULT_IMAGE_PREPARATION: Final = "client"
"""Images are prepared on the client, exactly as the served processor would (types.ImagePreparation)."""

DEFAULT_MAX_IMAGE_PIXELS = 178_956_970
"""Refuse images with more pixels than this before decoding them (decompression-bomb guard).
178,956,970 is the point at which Pillow itself refuses (twice its warning threshold).
"""

DEFAULT_EMBEDDING_DIM = 768
"""ViT-L/14's embedding width; used only for the shape of an empty result."""

RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504, 555})
"""Status codes that are worth another attempt (555: an endpoint scaling up from zero)."""

VOLUME_MAX_IN_FLIGHT = 16
"""Files API requests (downloads, listing pages) one workspace's volume reader has in flight at once."""
VOLUME_MAX_RETRIES = 5
"""Retries of one Files API request that failed transiently (408/429/5xx, a dropped connection), on
top of databricks-sdk's own retries of 429 and 503."""
VOLUME_RETRY_DEADLINE = 300.0
"""Seconds one Files API request may spend retrying."""

SCALING_FROM_ZERO_STATUS = 555
"""Databricks' own status (not HTTP's) for a serving endpoint that is scaling up from zero: retried
like a 503 of a starting endpoint, within the call's deadline, without using up `max_retries`."""

LOGGER_NAME = "clip_client"

DEFAULT_LOCAL_MODEL = "openai/clip-vit-large-patch14"
"""The model local mode loads when none is named: the one the serving endpoints serve."""
