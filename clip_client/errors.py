"""One exception tree for everything the client can raise.

Every error says what failed, where (the input's index and path, or the endpoint and HTTP status) and,
where it can, what to do about it. Messages never contain credentials.
"""

from __future__ import annotations

import ast
import copy
import re
from typing import Any, Protocol

from ._core.secrets import redact, shorten

# Server text quoted in an error (a message, an `error_code`) is cut to this many characters: a
# 2 MB JSON message must not become a 2 MB exception and log line on every retry.
_QUOTED_MESSAGE = 2000
_QUOTED_CODE = 100

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BackendError",
    "BadRequestError",
    "ClipClientError",
    "ConfigurationError",
    "CredentialsError",
    "DimensionMismatchError",
    "EndpointNotFoundError",
    "ImageDecodeError",
    "IndexNotReadyError",
    "IndexSpecMismatchError",
    "InvalidInputError",
    "ModelLoadError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseFormatError",
    "ServerError",
    "SourceTableError",
    "Spelling",
    "UpsertFailedError",
    "VectorSearchError",
    "VectorSearchNotFoundError",
    "VectorSearchPermissionError",
    "python_spelling",
]

SettingValue = str | int
"""A value of a setting that advice can suggest."""


class _Grouped(int):
    """A count that a message shows with thousands separators (`repr`: `178,956,970`), and that is
    typed as the plain number (`str`, `format`: `178956970`): the limit an advice names,
    `{max_image_pixels=178_956_970}` in a template, reads `max_image_pixels=178,956,970` in Python
    words and `--max-image-pixels 178956970` on the command line."""

    def __repr__(self) -> str:
        return f"{int(self):,}"

    def __str__(self) -> str:
        return int.__repr__(self)


class Spelling(Protocol):
    """How a layer names a client setting in advice. The library's own is `python_spelling`; the
    `clip-client` command names its options instead (`--max-image-pixels`, `--device cpu`)."""

    def __call__(self, setting: str, value: SettingValue | None = None, *, keyword: bool = False) -> str:
        """`setting` alone (`value` None), as the keyword one passes (`keyword`), or set to
        `value`."""
        ...


_POSITIONAL = {"model": "ClipClient.local"}
"""Settings a Python caller passes positionally, with the call that takes them."""


def python_spelling(setting: str, value: SettingValue | None = None, *, keyword: bool = False) -> str:
    """A setting as a Python caller names it: `max_image_pixels`, the keyword `text_endpoint=`,
    or with a value, `device='cpu'` (the model: `ClipClient.local('path/to/folder')`)."""
    if value is not None:
        call = _POSITIONAL.get(setting)
        return f"{call}({value!r})" if call else f"{setting}={value!r}"
    return f"{setting}=" if keyword else setting


_PLACEHOLDER = re.compile(r"\{([a-z][a-z_]*)(=[^{}]*)?\}")
"""In an advice template, `{name}` names a setting, `{name=}` the keyword that passes it, and
`{name=literal}` the setting with a value (`{device='cpu'}`; a number written with `_` between
its digit groups, `{max_image_pixels=100_000}`, is shown grouped where a message reads it,
`100,000`, and plain where it is typed); `{suggestion}` is the error's own setting with its
suggested value.
"""


def spell_advice(
    template: str,
    spelling: Spelling = python_spelling,
    *,
    setting: str | None = None,
    suggestion: SettingValue | None = None,
) -> str:
    """`template` with every setting it names spelled by `spelling`; a suggestion the template
    does not place itself follows as `(e.g. ...)`. Templates are the library's own text, never
    input or server text."""

    def one(match: re.Match[str]) -> str:
        name, assigned = match.groups()
        if name == "suggestion" and assigned is None:
            if setting is None or suggestion is None:
                raise ValueError("{suggestion} in an advice without a setting and a suggestion")
            return spelling(setting, suggestion)
        if assigned is None:
            return spelling(name)
        if assigned == "=":
            return spelling(name, keyword=True)
        literal = assigned[1:]
        value: SettingValue = ast.literal_eval(literal)
        if isinstance(value, int) and "_" in literal:
            value = _Grouped(value)
        return spelling(name, value)

    text = _PLACEHOLDER.sub(one, template)
    if setting is not None and suggestion is not None and "{suggestion}" not in template:
        text += f" (e.g. {spelling(setting, suggestion)})"
    return text


def with_advice(text: str, advice: str | None) -> str:
    """`text`, then `advice` as its own clause (after `;`, or after a full stop that ends it)."""
    if not advice:
        return text
    return f"{text} {advice}" if text.endswith(".") else f"{text}; {advice}"


class ClipClientError(Exception):
    """Root of every error raised by clip_client.

    Where one setting of the client would fix the error, the error names it, so that a layer which
    spells settings its own way (the `clip-client` command's options, a web form) can give the same
    advice in its own words. The message itself names the setting as a Python keyword argument.

    Attributes:
        setting: the client setting to change (a keyword argument of
            [ClipClient][clip_client.ClipClient] or `ClipClient.local`, or a field of
            [Settings][clip_client.Settings]): `"max_image_pixels"`, `"device"`,
            `"image_preparation"`, `"text_endpoint"`, `"host"`, `"model"`...; None when no setting
            would help.
        suggestion: a value of `setting` to try, where there is one (`"cpu"` for `device`, a pixel
            count for `max_image_pixels`); None otherwise. Never a credential.
    """

    setting: str | None = None
    suggestion: SettingValue | None = None
    _advice: str | None = None
    """The advice in the message, as a template (see `spell_advice`); None for none."""

    def _set_advice(self, setting: str | None, suggestion: SettingValue | None, advice: str | None) -> None:
        if setting is not None:
            self.setting = setting
        if suggestion is not None:
            self.suggestion = suggestion
        if advice is not None:
            self._advice = advice

    def advice(self, spelling: Spelling = python_spelling) -> str | None:
        """What to do about this error, with settings named as `spelling` names them (by default
        as Python keyword arguments, as the message says it); None when the error gives no advice."""
        if self._advice is None:
            return None
        return spell_advice(self._advice, spelling, setting=self.setting, suggestion=self.suggestion)

    def render(self, spelling: Spelling, text: str | None = None) -> str:
        """`text` (by default the message) with this error's advice given in `spelling`'s words:
        the span of `text` that is the advice in Python words is replaced; nothing else changes."""
        text = str(self) if text is None else text
        said = self.advice()
        if not said:
            return text
        at = text.rfind(said)
        if at < 0:
            return text
        return text[:at] + (self.advice(spelling) or "") + text[at + len(said) :]

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (Spark, multiprocessing); keyword-only constructors would
        # break the default pickling, so rebuild from the instance state instead.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


def _restore(cls: type[ClipClientError], args: tuple[Any, ...], state: dict[str, Any]) -> ClipClientError:
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class InvalidInputError(ClipClientError, ValueError):
    """An input cannot be embedded. Raised before any request is sent for the batch that holds it.

    Attributes:
        index: position of the offending input in the list the caller passed (None for a bare call
            such as `embed_text`).
        path: the file path, where the input was one, in full and as the caller gave it. The
            message quotes at most [`PATH_SHOWN`][clip_client.InvalidInputError.PATH_SHOWN] characters of it:
            a longer string (typically a whole base64 image passed where a path was expected) is shown as its
            start, an ellipsis, its end and its length.
        argument: the argument `index` counts in when it is not the inputs to embed (`"labels"`
            or `"templates"` of `classify`), whose message then names `labels[i]` itself;
            None for the inputs (the message starts `input i:`).
        reason: the message without the location (index and path), advice included.
    """

    PATH_SHOWN = 120
    """Paths up to this long appear in the message in full."""

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        path: str | None = None,
        argument: str | None = None,
        setting: str | None = None,
        suggestion: SettingValue | None = None,
        advice: str | None = None,
    ) -> None:
        self.index = index
        self.path = path
        self.argument = argument
        self._set_advice(setting, suggestion, advice)
        self.reason = with_advice(message, self.advice())
        super().__init__(self._format())

    def _without_index(self) -> InvalidInputError:
        """This error as a call that takes one input raises it (`embed_image`: no list to index): a
        copy of the same class, without `index`, with everything else (the advice too) kept."""
        new = copy.copy(self)
        new.index = None
        new.args = (new._format(),)
        return new

    def _format(self) -> str:
        where = []
        if self.index is not None and self.argument is None:
            where.append(f"input {self.index}")
        if self.path is not None:
            where.append(f"path {self._excerpt(self.path)}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{prefix}{self.reason}"

    @classmethod
    def _excerpt(cls, text: str) -> str:
        """`repr(text)`; for a string over `PATH_SHOWN` characters, its first 60 and last 20
        characters and its length."""
        if len(text) <= cls.PATH_SHOWN:
            return repr(text)
        return f"{text[:60] + '…' + text[-20:]!r} ({len(text):,} characters)"


class ImageDecodeError(InvalidInputError):
    """An image input could not be read or decoded (corrupt, truncated, not an image, too large)."""


class ConfigurationError(ClipClientError, ValueError):
    """A setting of the client is wrong for this machine or this workspace: a `device` torch does
    not know or this machine lacks, no Databricks workspace to resolve from `host`/`profile`
    and the environment. Raised when the client is built, before any request.

    Also a `ValueError`, so code that caught `ValueError` for these keeps working.

    Attributes:
        setting: the setting to change (always set): `"device"`, `"host"`...
        reason: what is wrong, without naming the setting and without the advice (`"'cuda' but
            no CUDA GPU is available..."`), for a caller that names the setting its own way and
            gives the advice in its own words (`advice(spelling)`).
    """

    def __init__(
        self,
        message: str,
        *,
        setting: str,
        reason: str | None = None,
        suggestion: SettingValue | None = None,
        advice: str | None = None,
    ) -> None:
        self._set_advice(setting, suggestion, advice)
        self.reason = message if reason is None else reason
        super().__init__(with_advice(message, self.advice()))


class CredentialsError(ClipClientError):
    """databricks-sdk could not produce credentials (expired OAuth secret, missing profile...)."""


class ModelLoadError(ClipClientError):
    """The local CLIP model could not be loaded; the message says why and how to fix it
    (`setting` is `"model"` when another checkpoint would)."""

    def __init__(
        self,
        message: str,
        *,
        setting: str | None = None,
        suggestion: SettingValue | None = None,
        advice: str | None = None,
    ) -> None:
        self._set_advice(setting, suggestion, advice)
        super().__init__(with_advice(message, self.advice()))


class APIError(ClipClientError):
    """A request to a serving endpoint failed.

    Attributes:
        endpoint: the serving endpoint's name.
        attempts: how many attempts were made before this error was raised.
    """

    index: int | None = None
    """The input this error concerns, when it concerns exactly one (a single item too large for
    the endpoint, or isolated as the one a 400 was about); None for a whole batch.
    """

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        attempts: int = 1,
        setting: str | None = None,
        advice: str | None = None,
    ) -> None:
        # Server and library text may quote a credential back (a 401 naming the token, a gateway
        # page listing the request headers): it is scrubbed here, before it can reach str(), repr(),
        # a log line, a pickle or a traceback. The advice (a template of the library's own) follows.
        self._set_advice(setting, None, advice)
        message = shorten(redact(message), _QUOTED_MESSAGE)
        if advice is not None:
            message = with_advice(message, spell_advice(advice))
        self.message = message
        self.endpoint = endpoint
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        text = self._describe()
        if self.attempts > 1:
            text += f" (gave up after {self.attempts} attempts)"
        if self.index is not None:
            text = f"input {self.index}: {text}"
        return text

    def _describe(self) -> str:
        where = f"endpoint {self.endpoint!r}: " if self.endpoint else ""
        return f"{where}{self.message}"


class ResponseFormatError(APIError):
    """The endpoint answered 200 but the body is not the embeddings asked for: not JSON (a gateway's
    HTML page), no `predictions`, the wrong number of rows, ragged or non-finite rows.

    Retried once, since a gateway's page is transient while a model that answers the wrong shape
    will answer it again (docs/reliability.md); `attempts` says how many attempts were made.

    Attributes:
        request_id: the `x-request-id` of the answer, when it had one.
    """

    hint = (
        "Check that the endpoint serves a CLIP embedding model answering "
        '{"predictions": [[float, ...], ...]} with one row per record; an HTML page usually means a '
        "proxy or gateway between the client and the workspace"
    )

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        request_id: str | None = None,
        attempts: int = 1,
        hint: str | None = None,
    ) -> None:
        self.request_id = None if request_id is None else redact(request_id)
        if hint is not None:
            self.hint = hint
        super().__init__(message, endpoint=endpoint, attempts=attempts)

    def _describe(self) -> str:
        text = super()._describe()
        if self.request_id:
            text += f" [request_id={self.request_id}]"
        return f"{text}{'' if text.endswith('.') else '.'} {self.hint}"


class BackendError(APIError):
    """The backend raised an exception of its own on a batch (not a `ClipClientError`): a failure
    inside the in-process model or a custom [`Backend`][clip_client.Backend]. The original is chained as
    `__cause__`; `on_error="mark"` marks the batch's rows failed like any other failure."""


class APIConnectionError(APIError):
    """The request never got a complete HTTP answer: DNS, refused or dropped connection, TLS failure.

    The message names the underlying error (`Connection refused`, `Name or service not known`);
    the httpx exception is chained as `__cause__`.
    """

    retryable: bool = True
    """False for failures another attempt cannot fix (a TLS certificate that does not verify)."""
    name_resolution: bool = False
    """True when the workspace's host name did not resolve (DNS). Retried once at most: a wrong
    `DATABRICKS_HOST`, profile or VPN does not fix itself within a retry's wait.
    """


class APITimeoutError(APIConnectionError):
    """A time bound ran out: one attempt's `timeout` (its whole duration: connecting, sending and
    receiving the complete answer), or the call's `deadline=`.

    An attempt that ran out of `timeout` is retried. When the call's deadline passes (or would
    pass before the next retry), the error says so, names the last failure of the call's attempts
    and chains it as `__cause__`; it is not retried and `deadline_passed` is True.
    """

    deadline_passed: bool = False
    """True when the call's `deadline=` ran out, rather than one attempt's `timeout`."""


class APIStatusError(APIError):
    """The endpoint answered with an HTTP error status.

    Attributes:
        status_code: HTTP status.
        error_code: the server's `error_code` (e.g. `RESOURCE_DOES_NOT_EXIST`), when it sent one.
        message: the server's message, or a short excerpt of a non-JSON body.
        request_id: the `x-request-id` of the failed request, for support tickets.
        retry_after: seconds the server asked us to wait, when it sent `Retry-After`.
    """

    hint: str = ""
    """One line of advice appended to the message; subclasses override it."""
    default_status: int | None = None
    """The status a subclass stands for, so `BadRequestError("...")` needs no `status_code`."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        endpoint: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        if status_code is None:
            if self.default_status is None:
                raise TypeError(f"{type(self).__name__} needs status_code=")
            status_code = self.default_status
        self.status_code: int = status_code
        self.error_code = None if error_code is None else shorten(redact(error_code), _QUOTED_CODE)
        self.request_id = None if request_id is None else redact(request_id)
        self.retry_after = retry_after
        super().__init__(message, endpoint=endpoint, attempts=attempts)

    def _describe(self) -> str:
        head = f"HTTP {self.status_code}"
        if self.error_code:
            head += f" {self.error_code}"
        where = f"endpoint {self.endpoint!r} answered " if self.endpoint else ""
        text = f"{where}{head}: {self.message}"
        if self.request_id:
            text += f" [request_id={self.request_id}]"
        hint = self._hint()
        if hint:
            text += f"{'' if text.endswith('.') else '.'} {hint}"
        return text

    def _hint(self) -> str:
        """The advice the message ends with: `hint`, unless a subclass says more."""
        return self.hint


class BadRequestError(APIStatusError):
    """400: the endpoint rejected the input, or the model raised inside `predict`."""

    default_status = 400

    hint = "Check that the endpoint serves this kind of input (text vs image) and read the server's message"


class AuthenticationError(APIStatusError):
    """401: missing, expired or invalid credentials."""

    default_status = 401

    hint = (
        "Check DATABRICKS_TOKEN / DATABRICKS_HOST, your ~/.databrickscfg profile, or the OAuth client "
        "credentials"
    )


class PermissionDeniedError(APIStatusError):
    """403: the identity may not query this endpoint."""

    default_status = 403

    hint = "Ask a workspace admin for CAN QUERY permission on the serving endpoint"


class EndpointNotFoundError(APIStatusError):
    """404: no serving endpoint of that name in this workspace."""

    default_status = 404

    _advice = "Check the endpoint name ({text_endpoint=} / {image_endpoint=}) and the workspace host"
    hint = spell_advice(_advice)


class PayloadTooLargeError(APIStatusError):
    """413: the request body was over the serving limit (16 MB)."""

    default_status = 413
    setting = "batch_size"

    _advice = "Lower {max_request_bytes} or {batch_size}"
    hint = spell_advice(_advice)
    _alone = (
        "The input is too large even alone in a request: send a smaller image or a shorter text; "
        "{image_preparation='client'} sends an image as a 224x224 crop, made smaller still by "
        "{image_format='jpeg'}"
    )
    """The advice when `index` is set: the input was alone in its request, so no smaller batch helps."""

    def advice(self, spelling: Spelling = python_spelling) -> str | None:
        if self.index is None:
            return super().advice(spelling)
        return spell_advice(self._alone, spelling)

    def _hint(self) -> str:
        return self.hint if self.index is None else spell_advice(self._alone)


class RateLimitError(APIStatusError):
    """429: the workspace or endpoint is over its request rate."""

    default_status = 429
    setting = "max_concurrency"

    _advice = "Lower {max_concurrency}, or raise the endpoint's rate limit"
    hint = spell_advice(_advice)


class ServerError(APIStatusError):
    """5xx: the endpoint failed, is scaling from zero, or timed out. Databricks answers 555 (its
    own status) while an endpoint scales up from zero: retried like a 503 within the deadline."""

    default_status = 500

    _scaling = (
        "HTTP 555 is Databricks' answer while the endpoint scales up from zero (it can take minutes): "
        "raise {retry_deadline} (or the call's deadline) to wait for it, or turn scale to zero off"
    )
    """The advice for a 555: the endpoint was still scaling up from zero when the wait ended."""

    def advice(self, spelling: Spelling = python_spelling) -> str | None:
        if self.status_code != 555:
            return super().advice(spelling)
        return spell_advice(self._scaling, spelling)

    def _hint(self) -> str:
        return spell_advice(self._scaling) if self.status_code == 555 else self.hint


_STATUS_ERRORS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: EndpointNotFoundError,
    413: PayloadTooLargeError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The most specific exception class for an HTTP error status."""
    if status_code in _STATUS_ERRORS:
        return _STATUS_ERRORS[status_code]
    if status_code >= 500:
        return ServerError
    return APIStatusError


# --------------------------------------------------------------------------------------------------
# Vector Search (clip_client.vector_search)


class VectorSearchError(ClipClientError):
    """Databricks Vector Search refused or failed a request of
    `clip_client.vector_search` ([guide](vector-search.md)), or an index cannot serve the client.

    The message names the index (or endpoint, or source table), what was asked, the HTTP status and
    `error_code` where the service answered one, and what to do. It is scrubbed of credentials.

    Attributes:
        index: the Vector Search index's Unity Catalog name (`catalog.schema.index`), when the error
            concerns one.
        endpoint: the Vector Search endpoint's name, when the error concerns one.
        status_code: the HTTP status of the service's refusal; None when no request failed.
        error_code: the service's `error_code` (`RESOURCE_DOES_NOT_EXIST`...), when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        index: str | None = None,
        endpoint: str | None = None,
        status_code: int | None = None,
        error_code: str | None = None,
        setting: str | None = None,
        advice: str | None = None,
    ) -> None:
        self.index = index
        self.endpoint = endpoint
        self.status_code = status_code
        self.error_code = None if error_code is None else shorten(redact(error_code), _QUOTED_CODE)
        # The advice (a template of the library's own, naming keywords as `{primary_key=}`) follows
        # the message, so that the command can give it with its option names.
        self._set_advice(setting, None, advice)
        super().__init__(with_advice(shorten(redact(message), _QUOTED_MESSAGE), self.advice()))


class VectorSearchNotFoundError(VectorSearchError):
    """404: no Vector Search index, endpoint or source table of that name (the message says which),
    or one the identity cannot see."""


class VectorSearchPermissionError(VectorSearchError):
    """403: the identity lacks a privilege. The message lists the ones the call needs: `SELECT`
    on the index (or source table) with `USE CATALOG` and `USE SCHEMA` on its catalog and schema,
    and `CAN USE` (query) or `CAN MANAGE` (create, sync) on the endpoint."""


class IndexNotReadyError(VectorSearchError):
    """The index is not online: still provisioning, its sync failed, or it did not come online
    within the wait's timeout.

    Attributes:
        state: the index's `detailed_state` (`PROVISIONING_INITIAL_SNAPSHOT`,
            `OFFLINE_FAILED`...), or `"NOT_READY"` when the service gives none.
        status_message: the index's own `status.message`, verbatim (scrubbed), or None.
    """

    def __init__(self, message: str, *, state: str, status_message: str | None = None, **where: Any) -> None:
        self.state = state
        self.status_message = None if status_message is None else redact(status_message)
        super().__init__(message, **where)


class DimensionMismatchError(VectorSearchError, ValueError):
    """The index holds vectors of another width than the client's model embeds (a 512-d index
    queried with ViT-L/14's 768-d embeddings). Raised before any query is sent.

    Attributes:
        index_dim: the index's `embedding_dimension`.
        client_dim: the width of the client's embeddings.
    """

    def __init__(self, message: str, *, index_dim: int, client_dim: int, **where: Any) -> None:
        self.index_dim = index_dim
        self.client_dim = client_dim
        super().__init__(message, **where)


class IndexSpecMismatchError(VectorSearchError, ValueError):
    """`create_index` found an index of that name whose specification differs from the one asked
    for; nothing was changed.

    Attributes:
        differences: `{field: (existing, asked)}` for every field that differs.
    """

    def __init__(self, message: str, *, differences: dict[str, tuple[Any, Any]], **where: Any) -> None:
        self.differences = differences
        super().__init__(message, **where)


class SourceTableError(VectorSearchError, ValueError):
    """The Delta table a Delta Sync index would read cannot serve as its source: a column is
    missing, or Change Data Feed is off. Raised before anything is created.

    Attributes:
        table: the source table's name.
        statement: the SQL statement that fixes it, when one does (`ALTER TABLE ... SET
            TBLPROPERTIES (delta.enableChangeDataFeed = true)`); None otherwise.
    """

    def __init__(self, message: str, *, table: str, statement: str | None = None, **where: Any) -> None:
        self.table = table
        self.statement = statement
        super().__init__(message, **where)


class UpsertFailedError(VectorSearchError):
    """Some rows of an upsert (or keys of a delete) were not written: the service answered with
    `failed_primary_keys` (or refused a request after earlier ones succeeded).

    Attributes:
        failed_keys: the primary keys not written, as the service names them (strings); for a
            refused request, every key it carried.
        written: how many rows (or keys) were written before and besides the failure.
    """

    def __init__(self, message: str, *, failed_keys: list[str], written: int, **where: Any) -> None:
        self.failed_keys = failed_keys
        self.written = written
        super().__init__(message, **where)
