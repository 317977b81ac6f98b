"""Ray token authentication on the client side: for `jobs/submit.py` and `evol-ray run` joining a
cluster (`ray.address`).

Since Ray 2.59 a cluster started with `ray start --head` (or KubeRay with `authOptions.mode:
token`) requires a token from every client, while a client's own mode is `disabled` until
`RAY_AUTH_MODE=token` is set. Where a token is available (`RAY_AUTH_TOKEN`, the file named by
`RAY_AUTH_TOKEN_PATH`, or `~/.ray/auth_token`, which `ray start --head` writes) and the mode is
unset, the client mode is set to `token`; `RAY_AUTH_MODE=disabled` set by the user is respected.

The token itself is never logged or put in a message: only where it came from.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, MutableMapping, Optional, Tuple

class ClusterAuthError(RuntimeError):
    """Joining a Ray cluster failed on its token; the message says which and what to set."""


HOW_TO = ("set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it "
          "(a cluster started here with `ray start --head` keeps it in ~/.ray/auth_token; on KubeRay "
          "it is the Secret named after the cluster, key auth_token: see k8s/README.md)")


def find_token(env: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """(token, where it came from) as Ray's client looks for it, or (None, None)."""
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if path:
        p = Path(path).expanduser()
        return (p.read_text().strip() or None, f"the file {p} ($RAY_AUTH_TOKEN_PATH)") if p.is_file() else \
            (None, None)
    home = Path(env.get("HOME", str(Path.home()))) / ".ray" / "auth_token"
    if home.is_file() and home.read_text().strip():
        return home.read_text().strip(), f"the file {home}"
    return None, None


def use_token_if_found(env: MutableMapping[str, str]) -> Optional[str]:
    """Set RAY_AUTH_MODE=token in `env` when a token is found and no mode is set; returns where
    the token came from (None: no token, or the mode was already set)."""
    if env.get("RAY_AUTH_MODE"):
        return find_token(env)[1] if env["RAY_AUTH_MODE"] == "token" else None
    _, source = find_token(env)
    if source:
        env["RAY_AUTH_MODE"] = "token"
    return source


def check_job_server(address: str, env: Mapping[str, str], timeout_s: float = 10.0) -> Optional[str]:
    """One request to the job server at `address` (http://head:8265) with the token the client
    would send; returns what is wrong in words (no token where one is needed, a refused token,
    an unreachable server), or None when it answers."""
    token, source = find_token(env) if env.get("RAY_AUTH_MODE") != "disabled" else (None, None)
    url = address.rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    req = urllib.request.Request(f"{url}/api/version")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as e:
        if e.code == 401:
            why = ("RAY_AUTH_MODE=disabled is set in this shell" if env.get("RAY_AUTH_MODE") == "disabled"
                   else "no token was found")
            return (f"the Ray cluster at {address} requires token authentication (Ray's default since "
                    f"2.59) and {why}: {HOW_TO}")
        if e.code == 403:
            return (f"the Ray cluster at {address} refused the token from {source}: it is not this "
                    f"cluster's token; {HOW_TO}")
        return f"the job server at {address} answered HTTP {e.code} ({e.reason})"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"cannot reach the Ray job server at {address}: {reason}"


def explain_init_error(e: BaseException, address: str, env: Mapping[str, str]) -> Optional[str]:
    """`ray.init(address)` failed with `e`: the reason in words when it is the token, else None."""
    chain, x = [], e
    while x is not None and len(chain) < 8:  # ray.init wraps the GCS client's error in others
        chain.append(f"{type(x).__name__}: {x}")
        x = x.__cause__ or x.__context__
    text = "\n".join(chain)
    if "AuthenticationError" not in text and "authentication token" not in text.lower():
        return None
    _, source = find_token(env)
    if env.get("RAY_AUTH_MODE") == "token" and source:  # a token was sent: it was the wrong one
        return f"the Ray cluster at {address} refused the token from {source}; {HOW_TO}"
    if env.get("RAY_AUTH_MODE") == "disabled":
        return (f"the Ray cluster at {address} requires token authentication but RAY_AUTH_MODE=disabled "
                f"is set here: unset it, and {HOW_TO}")
    return f"the Ray cluster at {address} requires token authentication and no token was found: {HOW_TO}"
