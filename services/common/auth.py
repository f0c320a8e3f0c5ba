"""API keys, their roles, and per-key rate limits.

Callers send `authorization: Bearer <key>` in the call's metadata. Keys come from a YAML file (a
Secret in a cluster), read once at start:

```yaml
keys:
  - name: analytics                   # appears in logs and errors, never the key itself
    sha256: "9f86d081884c7d65..."     # hex SHA-256 of the key (the file need not hold the key)
    rate_per_second: 50               # optional: token bucket refilled at this rate...
    burst: 100                        # ...holding at most this many calls (default: the rate, at least 1)
  - name: ops
    key: "a-long-random-string"       # or the key itself; only its hash is kept in memory
    roles: [infer, admin]             # default [infer]; admin may load and unload model versions
```

Only SHA-256 digests are kept in memory; a presented key is hashed and looked up by its digest.

Roles: `infer` may make every call but the repository's load and unload (`ADMIN_METHODS`), which need
`admin`. Rate limits are per gateway process: behind N gateway replicas each takes 1/N of a key's rate
and burst (`replicas`, which the chart sets from the replica count it knows), so the key's total stays
near its limit while calls spread evenly over the replicas.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from services.common.errors import Overloaded, PermissionDenied, Unauthenticated

AUTHORIZATION_KEY = "authorization"
BEARER = "bearer "
FLOAT_SLACK = 1e-9
Role = Literal["infer", "admin"]
ADMIN_METHODS = frozenset({"RepositoryModelLoad", "RepositoryModelUnload"})
"""Methods only a key with the `admin` role may call; every other method needs `infer`."""


class KeysFileError(ValueError):
    """The API keys file cannot be used; the message names the file and what is wrong."""


class KeyEntry(BaseModel):
    """One API key in the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Who the key belongs to; used in logs and error details.")
    key: str | None = Field(None, min_length=16, description="The key itself (at least 16 characters).")
    sha256: str | None = Field(None, description="Hex SHA-256 of the key, instead of the key.")
    rate_per_second: float | None = Field(None, gt=0, description="Sustained calls per second; none: unlimited.")
    burst: int | None = Field(None, ge=1, description="Calls allowed at once above the rate; default: the rate.")
    roles: tuple[Role, ...] = Field(
        ("infer",), min_length=1, description="What the key may do: infer (every call but load/unload), admin."
    )

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value)):
            raise ValueError("sha256 must be 64 hex digits")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give either key or sha256")
        if self.burst is not None and self.rate_per_second is None:
            raise ValueError("burst needs rate_per_second")
        return self

    @property
    def digest(self) -> bytes:
        """The SHA-256 digest of the key."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        return hashlib.sha256((self.key or "").encode()).digest()


class KeysFile(BaseModel):
    """The whole keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keys: tuple[KeyEntry, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> KeysFile:
        names = [entry.name for entry in self.keys]
        if len(set(names)) != len(names):
            raise ValueError("key names repeat")
        if len({entry.digest for entry in self.keys}) != len(self.keys):
            raise ValueError("the same key appears twice")
        return self


class TokenBucket:
    """A token bucket: `rate` tokens a second, holding at most `burst`; a call takes one token."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> float:
        """Take a token if there is one.

        Returns:
            0 if a token was taken, else the seconds until one will be there.
        """
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1 - FLOAT_SLACK:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self.rate


@dataclass
class _Key:
    name: str
    roles: frozenset[str]
    bucket: TokenBucket | None = field(default=None)
    total_rate: float = 0.0


class ApiKeys:
    """Checks the API key of each call and applies its key's rate limit."""

    def __init__(
        self, entries: Sequence[KeyEntry], clock: Callable[[], float] = time.monotonic, replicas: int = 1
    ) -> None:
        """Keep the digest and roles of every key, and a token bucket for each key with a rate.

        Args:
            entries: the keys file's entries.
            clock: seconds on a monotonic clock (tests pass their own).
            replicas: gateway processes sharing each key's limit: each takes 1/replicas of its rate and
                burst (a burst at least 1).
        """
        self.replicas = replicas
        self._keys: dict[bytes, _Key] = {}
        for entry in entries:
            key = _Key(entry.name, frozenset(entry.roles))
            if entry.rate_per_second is not None:
                burst = entry.burst or max(1, math.ceil(entry.rate_per_second))
                key.bucket = TokenBucket(entry.rate_per_second / replicas, max(1, math.ceil(burst / replicas)), clock)
                key.total_rate = entry.rate_per_second
            self._keys[entry.digest] = key

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None, method: str = "") -> str:
        """Authenticate a call by its metadata, check its key may call `method`, and count it against
        its key's rate.

        Args:
            metadata: the call's invocation metadata.
            method: the RPC's name (e.g. `RepositoryModelUnload`).

        Returns:
            The name of the caller's key.

        Raises:
            Unauthenticated: no `authorization` metadata, not `Bearer <key>`, or an unknown key.
            PermissionDenied: the key's roles do not allow `method`.
            Overloaded: the key is over its rate limit (the details say when to retry).
        """
        values = [value for key, value in metadata or () if key == AUTHORIZATION_KEY]
        if not values:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
        if len(values) > 1 or not value.lower().startswith(BEARER) or not value[len(BEARER) :].strip():
            raise Unauthenticated("malformed authorization metadata: send one 'authorization: Bearer <key>'")
        key = self._keys.get(hashlib.sha256(value[len(BEARER) :].strip().encode()).digest())
        if key is None:
            raise Unauthenticated("invalid API key")
        needed = "admin" if method in ADMIN_METHODS else "infer"
        if needed not in key.roles:
            raise PermissionDenied(
                f"API key '{key.name}' may not call {method}: it needs the {needed} role "
                f"(the key has {', '.join(sorted(key.roles))})"
            )
        if key.bucket is not None:
            wait = key.bucket.take()
            if wait:
                retry = math.ceil(wait * 1000) / 1000
                shared = f", this replica's share of {key.total_rate:g} calls/s" if self.replicas > 1 else ""
                raise Overloaded(
                    f"API key '{key.name}' is over its rate limit of {key.bucket.rate:g} calls/s "
                    f"(burst {key.bucket.burst}{shared}); retry in {retry:.3f} s",
                    retry_delay=retry,
                )
        return key.name


def load_api_keys(path: Path, replicas: int = 1) -> ApiKeys:
    """Read and check an API keys file.

    Args:
        path: the keys file.
        replicas: gateway processes sharing each key's rate limit (see `ApiKeys`).

    Raises:
        KeysFileError: the file is missing, not YAML, or not a valid keys file (the message says where).
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysFileError(f"API keys file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise KeysFileError(f"API keys file {path}: not YAML: {exc}") from None
    try:
        return ApiKeys(KeysFile.model_validate(data).keys, replicas=replicas)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise KeysFileError(f"API keys file {path}: {problems}") from None
