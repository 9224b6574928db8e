"""The immutable callout policy shipped by default (verbatim from "Restrict outbound
access from your Azure Data Explorer cluster")."""

from __future__ import annotations

# (CalloutType, CalloutUriRegex, CanCall), exactly as `.show cluster policy callout` lists them.
IMMUTABLE_CALLOUT_ROWS: tuple[tuple[str, str, bool], ...] = (
    ("kusto", r"[a-z0-9]{3,22}\.(\w+\.)?kusto(mfa)?\.windows\.net/?$", True),
    ("kusto", r"//[a-z0-9]{3,22}\.[a-z0-9-]{1,50}\.(kusto\.azuresynapse|kustodev\.azuresynapse-dogfood)\.net/?$", True),  # noqa: E501
    ("kusto", r"^https://([A-Za-z0-9]+\.)?(ade|adx)\.(int\.)?(applicationinsights|loganalytics|monitor)\.(io|azure(\.com|\.us|\.cn))/", True),  # noqa: E501
    ("sql", r"[a-z0-9][a-z0-9\-]{0,61}[a-z0-9]?\.database\.windows\.net/?$", True),
    ("sql", r"[a-z0-9-]{0,61}?(-ondemand)?\.sql\.azuresynapse(-dogfood)?\.net/?$", True),
    ("external_data", r".*", True),
    ("azure_digital_twins", r"[A-Za-z0-9\-]{3,63}\.api\.[A-Za-z0-9]+\.digitaltwins\.azure\.net/?$", True),  # noqa: E501
)

