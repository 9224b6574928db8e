"""The dashboard: server-rendered, read-only HTML pages over the control plane's store and
audit log (`routes.router`, included by the control-plane app).

No JavaScript and no template engine: every page is built by `views` from plain data
(`data`), and every value from the store or the log passes through `html.esc` or a
helper that escapes it, so a hostile host name or reason is shown, never run.
"""
