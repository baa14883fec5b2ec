"""The policy in force, shared by every kernel replica through ``<prefix>-policy``
(DESIGN §3.4). ``rebuno policy apply`` writes it here; each replica adopts it at
start and switches to every new version live (``Kernel._watch_policy``)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Mapping

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType

from schemas.records import PolicyBundle
from schemas.subjects import Names

from .policy import PolicySet, policy_from_sources

__all__ = ["ACTIVE_KEY", "apply_policy", "applied_policy", "decode_bundle", "bundle_policy"]

ACTIVE_KEY = "active"


async def _bucket(nc: NATS, names: Names, create: bool):
    js = nc.jetstream()
    try:
        return await js.key_value(names.policy_bucket)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            return None
        return await js.create_key_value(KeyValueConfig(bucket=names.policy_bucket, history=10,
                                                        storage=StorageType.FILE, description="Rebuno policy"))


async def apply_policy(nc: NATS, names: Names, files: Mapping[str, str], origin: str) -> PolicyBundle:
    """Validate ``files`` (file name → YAML text, as ``kernel.policy.policy_sources`` reads
    them) and store them as the policy in force.

    Returns:
        the stored bundle (its ``version`` is what ``intent.*`` events will record).

    Raises:
        kernel.policy.PolicyError: the policy is invalid (nothing is stored).
    """
    policy = policy_from_sources(files, origin)
    bundle = PolicyBundle(version=policy.version, files=dict(files), origin=origin,
                          applied_at=datetime.now(timezone.utc))
    kv = await _bucket(nc, names, create=True)
    await kv.put(ACTIVE_KEY, msgspec.json.encode(bundle))
    return bundle


def decode_bundle(data: bytes) -> PolicyBundle:
    """A stored bundle (raises msgspec.DecodeError / ValidationError when it is not one)."""
    return msgspec.json.decode(data, type=PolicyBundle)


def bundle_policy(data: bytes) -> PolicySet:
    """The policy a stored bundle holds, built exactly as ``apply`` validated it.

    Raises:
        kernel.policy.PolicyError, msgspec.DecodeError, msgspec.ValidationError.
    """
    bundle = decode_bundle(data)
    return policy_from_sources(bundle.files, bundle.origin or "rebuno policy apply")


async def applied_policy(nc: NATS, names: Names) -> PolicyBundle | None:
    """The bundle in force, or None when none was ever applied."""
    kv = await _bucket(nc, names, create=False)
    if kv is None:
        return None
    try:
        entry = await kv.get(ACTIVE_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode_bundle(entry.value) if entry.value else None
