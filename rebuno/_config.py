"""Connection settings shared by Agent, Runner, Client, the CLI and the kernel (DESIGN §6)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Settings", "DEFAULT_URL", "redact_url", "split_credentials"]

DEFAULT_URL = "nats://127.0.0.1:4222"


def redact_url(url: str) -> str:
    """``url`` (comma-separated list allowed) with any user, password or token replaced by ``***``."""
    out = []
    for part in url.split(","):
        u = urlsplit(part.strip())
        host = u.hostname or ""
        if u.username or u.password:
            host = "***@" + host + (f":{u.port}" if u.port else "")
            part = urlunsplit((u.scheme, host, u.path, u.query, u.fragment))
        out.append(part.strip())
    return ",".join(out)


def split_credentials(url: str) -> tuple[list[str], str, str, str]:
    """Servers without credentials, and (user, password, token) taken from the first URL that
    has any — given to the client explicitly, they also apply to servers the cluster announces."""
    servers, user, password, token = [], "", "", ""
    for part in (p.strip() for p in url.split(",") if p.strip()):
        u = urlsplit(part)
        if (u.username or u.password) and not (user or token):
            if u.password is None:
                token = u.username or ""
            else:
                user, password = u.username or "", u.password
        host = (u.hostname or "") + (f":{u.port}" if u.port else "")
        servers.append(urlunsplit((u.scheme, host, u.path, u.query, u.fragment)))
    return servers, user, password, token


@dataclass(frozen=True, slots=True)
class Settings:
    """Where and how to reach the broker.

    Attributes:
        url: NATS URL(s), comma-separated (``REBUNO_URL``, default ``nats://127.0.0.1:4222``).
        api_key: NATS token (``REBUNO_API_KEY``); empty means none.
        prefix: deployment prefix (``REBUNO_PREFIX``, default ``rebuno``).
        creds_file: NATS credentials file (``REBUNO_NATS_CREDS``).
        tls_ca / tls_cert / tls_key: TLS files (``REBUNO_TLS_CA``, ``REBUNO_TLS_CERT``, ``REBUNO_TLS_KEY``).
    """

    url: str = DEFAULT_URL
    api_key: str = ""
    prefix: str = "rebuno"
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def resolve(cls, url: str | None = None, api_key: str | None = None, prefix: str | None = None) -> "Settings":
        """Explicit arguments first, then ``REBUNO_*`` environment variables, then defaults.

        ``api_key=""`` explicitly disables the token even when ``REBUNO_API_KEY`` is set.
        An ``http(s)://`` URL is refused with ``ValueError``: this SDK speaks NATS.
        """
        env = os.environ
        u = (url or env.get("REBUNO_URL") or DEFAULT_URL).strip().rstrip("/")
        if u.startswith(("http://", "https://")):
            raise ValueError(f"REBUNO_URL/kernel_url must be a nats:// URL, got {u!r}; start a broker with "
                             "'rebuno dev' and use the nats:// URL it prints")
        return cls(
            url=u, api_key=env.get("REBUNO_API_KEY", "") if api_key is None else api_key,
            prefix=prefix or env.get("REBUNO_PREFIX") or "rebuno",
            creds_file=env.get("REBUNO_NATS_CREDS", ""), tls_ca=env.get("REBUNO_TLS_CA", ""),
            tls_cert=env.get("REBUNO_TLS_CERT", ""), tls_key=env.get("REBUNO_TLS_KEY", ""),
        )
