"""The DNS filter: decides every name lookup by the policy, and every answer again.

```python
from egressguard.dns import DnsFilter, FilterConfig, FilterThread, holder_for

with FilterThread(holder_for("policy.yaml"),
                  FilterConfig(listen=("127.0.0.1", 5353), upstream=("127.0.0.1", 53))):
    ...  # point resolv.conf / the pods' dnsConfig at 127.0.0.1:5353
```
"""

from egressguard.dns.decide import CnameMode, check_answer, decide_name
from egressguard.dns.server import DenyRcode, DnsFilter, FilterConfig, FilterThread
from egressguard.policyfile import PolicyFileWatcher, holder_for, load_active

__all__ = [
    "CnameMode",
    "DenyRcode",
    "DnsFilter",
    "FilterConfig",
    "FilterThread",
    "PolicyFileWatcher",
    "check_answer",
    "decide_name",
    "holder_for",
    "load_active",
]
