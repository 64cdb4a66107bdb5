"""``llmrelay`` for :mod:`bench.instructions`: the same server, with its periodic work spread
over as many requests as it is at full speed.

Under valgrind the server answers about a hundred requests a second instead of thousands, so
work done per batch or per second would weigh fifty times more on each request than it does in
production: the ledger commits a batch every 5 s instead of every 100 ms (about as many rows a
batch as at full speed), prices are reloaded every 10 minutes instead of every 2 s, and Redis
leases are renewed every 2.5 s instead of every 50 ms (so a key is as busy in a lease period as
at full speed, and gets a lease). Cached keys are looked up again every 20 s instead of every
0.5 s: a lookup is a database query, thousands of instructions, which at a hundred requests a
second weighed on every request as much as its accounting did.

The cyclic garbage collector is off once the server starts. At full speed it makes no
collection after the start (counted with ``gc.callbacks`` over a 20 s load of 60,000 metered
requests: none), since a request's objects are freed by reference counting; under valgrind a
collection fell into the counted seconds by chance, and weighed 60-86k instructions on each
request of that run.
"""

import gc

from llmrelay import auth
from llmrelay.accounting import ledger, meter, redis_limits
from llmrelay.cli import main
from llmrelay.store.keys import KeyStore

_authenticator_init = auth.Authenticator.__init__


def _slow_key_cache(
    self: auth.Authenticator, keys: KeyStore, *, cache_seconds: float = 0.5
) -> None:
    _authenticator_init(self, keys, cache_seconds=cache_seconds * 40)


def spread_periodic_work() -> None:
    """The slower periodic work described above (also used by :mod:`bench._opcode_server`)."""
    ledger.LedgerWriter.__init__.__kwdefaults__["max_delay"] = 5.0
    meter.PriceBook.__init__.__defaults__ = (600.0,)
    redis_limits.RedisLimiter.__init__.__kwdefaults__["lease_period"] = 2.5
    auth.Authenticator.__init__ = _slow_key_cache  # type: ignore[method-assign]


if __name__ == "__main__":
    spread_periodic_work()
    gc.disable()  # (the server's own gc.collect() and gc.freeze() at start still run)
    raise SystemExit(main())
