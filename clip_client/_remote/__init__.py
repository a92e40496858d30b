"""Everything that talks to a Databricks workspace.

Workspace and auth resolution (`workspace`), per-attempt time bounds (`timeouts`), HTTP status
to typed error (`status`), the retry policy (`retry`), what an endpoint says of itself
(`endpoint_state`) and what the client does about it (`preflight`), and the backend of the two
serving endpoints (`backend`).
"""
