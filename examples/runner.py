"""Example runner "compute": serves ``compute.fib`` and ``compute.primes`` to any agent the
kernel's policy allows.

Run it anywhere that reaches the broker (it opens no port of its own)::

    export REBUNO_URL=nats://127.0.0.1:4222      # what `rebuno dev` prints
    python examples/runner.py

Start several copies to share the job queue: instances with the same runner id
(``compute``) pull jobs round-robin, each only as many as ``max_concurrency``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, validate_call

from rebuno import Runner, tool


# The kernel does not check arguments against the advertised schema, and a runner calls the
# body with the job's arguments as they are. ``validate_call`` enforces the ``Field`` bounds
# here, so `n=-1` fails the step with a validation message instead of misbehaving.
@tool("compute.fib")
@validate_call
def fib(n: Annotated[int, Field(description="index of the Fibonacci number (F(0)=0, F(1)=1)", ge=0, le=10000)]
        ) -> dict:
    """The n-th Fibonacci number, computed iteratively (returned as a decimal string, it gets big)."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    # F(10000) has 2,090 digits: far beyond JSON's safe integer range, so send it as text.
    return {"n": n, "value": str(a), "digits": len(str(a))}


@tool("compute.primes")
@validate_call
def primes(n: Annotated[int, Field(description="return the primes strictly below n", ge=0, le=1_000_000)]
           ) -> dict:
    """The primes below n (sieve of Eratosthenes) and how many there are."""
    if n < 3:
        return {"n": n, "count": 0, "primes": []}
    sieve = bytearray([1]) * n
    sieve[0:2] = b"\x00\x00"
    for p in range(2, int(n ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, n, p)))
    found = [i for i in range(n) if sieve[i]]
    return {"n": n, "count": len(found), "primes": found[:100], "truncated": len(found) > 100}


if __name__ == "__main__":
    # REBUNO_URL / REBUNO_API_KEY / REBUNO_PREFIX are read from the environment.
    Runner("compute", capabilities=["compute.fib", "compute.primes"], max_concurrency=4).run()
