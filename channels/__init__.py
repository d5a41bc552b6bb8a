"""Channel adapters: translate platform events to envelopes and back (trust zone 1).

Adapters may import `gateway.envelope`, `gateway.sanitize`, `gateway.bus` and
their platform SDK, nothing else of the core.
"""
