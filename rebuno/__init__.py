"""Rebuno: a kernel-authoritative execution runtime for AI agents, on NATS.

Public surface: :class:`Agent`, :class:`Client`, :class:`Runner`, :func:`tool`,
:class:`MCPServer`, :mod:`remote`, :data:`execution`, and the error classes.
"""

from . import remote as remote
from . import types as types
from ._execution import ExecutionState as ExecutionState
from ._execution import execution as execution
from ._tools import tool as tool
from .agent import Agent as Agent
from .client import Client as Client
from .errors import APIError as APIError
from .errors import ConflictError as ConflictError
from .errors import NetworkError as NetworkError
from .errors import NotFoundError as NotFoundError
from .errors import PolicyError as PolicyError
from .errors import RateLimitedError as RateLimitedError
from .errors import RebunoError as RebunoError
from .errors import StepTimeoutError as StepTimeoutError
from .errors import ToolError as ToolError
from .errors import UnauthorizedError as UnauthorizedError
from .errors import ValidationError as ValidationError
from .mcp import MCPServer as MCPServer
from .runner import Runner as Runner

__version__ = "0.1.0"

__all__ = [
    "Agent", "Client", "Runner", "tool", "MCPServer", "remote", "execution", "ExecutionState", "types",
    "RebunoError", "APIError", "PolicyError", "RateLimitedError", "ToolError", "StepTimeoutError", "NetworkError", "ConflictError",
    "NotFoundError", "UnauthorizedError", "ValidationError", "__version__",
]
