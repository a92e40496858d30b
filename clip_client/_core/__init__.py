"""The core: everything the clients decide, with no network I/O and no workspace.

Input checks (`inputs`), the endpoint's wire format (`wire`), batching and ordering
(`batching`), image preparation (`images`) and the PNG writer (`png`), zero-shot maths
(`zeroshot`), the endpoint check's flow and parity maths (`endpoint_check`), the concurrency
bookkeeping a call's requests share (`concurrency`), the row streams (`streams`) and the one
place that knows and scrubs credentials (`secrets`). The client shells and the backends drive
these; nothing here opens a socket or talks to Databricks.
"""
