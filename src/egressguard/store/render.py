"""The two texts a version is stored as (its YAML and its JSON form), made without holding
the GIL for long: a commit can run in the gateway's own process (`serve` with the API),
whose event loop stalls for as long as one native call runs (issue 14 item 7).

* the data is dumped once for both (`policy_to_data`: a big collection a slice at a time);
* the JSON form is encoded a slice of rules at a time (`policy.load.json_text`);
* the YAML text of a big policy is emitted by a child Python (libyaml's emitter writes a
  whole document in one call: half a second at 100k rules) from the JSON form, which holds
  the same data; if that child fails, it is emitted here, as for a small policy.
"""

from __future__ import annotations

import logging
import subprocess
import sys

from egressguard.policy import Policy
from egressguard.policy.load import YAML_OPTIONS, json_text, policy_to_data, yaml_text

CHILD_AT = 5_000
"""Rules from which the YAML text is emitted by a child process (below, a few ms here)."""
_CHILD = (
    "import json, sys, yaml\n"
    "dumper = getattr(yaml, 'CSafeDumper', yaml.SafeDumper)\n"
    "data = json.loads(sys.stdin.buffer.read().decode('utf-8'))\n"
    f"text = yaml.dump(data, Dumper=dumper, **{YAML_OPTIONS!r})\n"
    "sys.stdout.buffer.write(text.encode('utf-8'))\n")
_log = logging.getLogger("egressguard.store.render")


def _rules(policy: Policy) -> int:
    return sum(len(c.rules) for c in policy.application_rule_collections) + sum(
        len(c.rules) for c in policy.network_rule_collections)


def stored_texts(policy: Policy) -> tuple[str, str]:
    """(the YAML text, the JSON form) of `policy`, as `dump_policy` and `dump_policy_json`
    write them."""
    data = policy_to_data(policy)
    json_form = json_text(data)
    if _rules(policy) >= CHILD_AT:
        text = _yaml_in_child(json_form)
        if text is not None:
            return text, json_form
    return yaml_text(data), json_form


def _yaml_in_child(json_form: str) -> str | None:
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHILD],
                              input=json_form.encode("utf-8"), capture_output=True,
                              timeout=600, check=False)
    except (OSError, subprocess.SubprocessError, UnicodeError) as exc:
        _log.warning("YAML text not emitted by a child process (%s); emitting it here", exc)
        return None
    if done.returncode != 0:
        _log.warning("YAML text not emitted by a child process (exit %d: %s); emitting it "
                     "here", done.returncode, done.stderr.decode("utf-8", "replace")[-300:])
        return None
    return done.stdout.decode("utf-8")
