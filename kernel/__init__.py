"""The Rebuno kernel actor: API service, pure state machine and policy, JetStream store."""

from .config import KernelConfig
from .policy import Policy, PolicyError, load_policy, permissive
from .service import Kernel

__all__ = ["Kernel", "KernelConfig", "Policy", "PolicyError", "load_policy", "permissive"]
