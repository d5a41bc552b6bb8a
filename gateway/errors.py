"""The one error tree of the Stockade core; retryability is part of the type.

    StockadeError
    ├── ConfigError            a settings file or override is wrong (exit status 2)
    ├── EnvelopeError          a stream entry is not a valid envelope (never retried)
    ├── StaleDelivery          a bus entry was already acked or dead-lettered elsewhere
    ├── DependencyError        a service we need is missing or unreachable
    │   ├── RedisUnavailable   Redis did not answer                       (retryable)
    │   ├── DockerUnavailable  the Docker engine did not answer           (retryable)
    │   ├── BinaryMissing      an executable is not installed; names the package
    │   └── ImageBuildError    the agent image could not be built; ends with the log's last lines
    ├── CommandError           a chat command was malformed; carries its usage line
    ├── BudgetError            a model call may not go ahead on the budget
    │   ├── BudgetExceeded     a cap leaves too little; says which window, and when it resets
    │   └── BudgetUnavailable  budget state unknown (Redis, script, ledger): refused (retryable)
    ├── VaultError             the secret store cannot do what was asked (bad name or value)
    │   ├── VaultKeyError      no master key, a malformed one, or a key file others can read
    │   ├── VaultCorrupt       an entry failed authentication or the store is malformed
    │   └── SecretNotFound     no entry of that name
    └── PlatformError          a chat platform refused or failed a send
        ├── RateLimited        the platform said when to try again           (retryable)
        └── PlatformUnavailable  no answer, or a server error                (retryable)

No vault error's message holds a secret value or the master key.

`retryable` says whether doing the same thing again later may succeed.
"""

from __future__ import annotations


class StockadeError(Exception):
    """Base of every error Stockade raises on purpose."""

    retryable: bool = False


class ConfigError(StockadeError):
    """A configuration file or environment override is invalid.

    `str()` is one line naming the file, the key and the problem.
    """

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        super().__init__(f"{source}: {key}: {problem}")


class EnvelopeError(StockadeError):
    """Stream fields that do not decode to an envelope: a poison entry."""


class StaleDelivery(StockadeError):
    """A bus entry is no longer pending in its consumer group: nothing was written.

    Another consumer reclaimed and finished it, or it was dead-lettered, while this
    one was still working on it. Forwarding it now would deliver it twice.
    """


class DependencyError(StockadeError):
    """A service or program Stockade needs is not there."""


class RedisUnavailable(DependencyError):
    """Redis did not answer; the same call may work once it is back."""

    retryable = True


class BinaryMissing(DependencyError):
    """An executable is not on PATH; the message names the package to install."""

    def __init__(self, binary: str, package: str) -> None:
        self.binary = binary
        self.package = package
        super().__init__(
            f"{binary} was not found on PATH; install it with: apt-get install {package}"
        )


class DockerUnavailable(DependencyError):
    """The Docker engine did not answer; the message says how to start it or point to it."""

    retryable = True


class ImageBuildError(DependencyError):
    """Building the agent image failed; `log_tail` holds the last lines of the build's log.

    `str()` is the reason followed by those lines, ready to show without a traceback.
    """

    def __init__(self, reason: str, log_tail: tuple[str, ...] = ()) -> None:
        self.reason = reason
        self.log_tail = log_tail
        lines = [reason, *(f"  | {line}" for line in log_tail)]
        super().__init__("\n".join(lines))


class CommandError(StockadeError):
    """A chat command with bad arguments; `usage` is the line to show the user."""

    def __init__(self, message: str, usage: str) -> None:
        self.usage = usage
        super().__init__(message)


class VaultError(StockadeError):
    """The vault refused or failed; also an invalid secret name or value.

    Messages name entries and files, never a value or the key: they reach logs and terminals.
    """


class VaultKeyError(VaultError):
    """No usable master key: none configured, not base64 of 32 bytes, or readable by others."""


class VaultCorrupt(VaultError):
    """The store is malformed, or an entry failed authentication: a wrong key or an altered file.

    `entry` names the entry at fault, when there is one.
    """

    def __init__(self, message: str, entry: str | None = None) -> None:
        self.entry = entry
        super().__init__(message)


class SecretNotFound(VaultError):
    """The vault has no entry called `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no secret {name!r} in the vault; add it with: stockade vault set {name}")


class BudgetError(StockadeError):
    """A model call may not go ahead on the budget; nothing stays reserved for it."""


class BudgetExceeded(BudgetError):
    """A spending cap leaves too little for the call.

    `sentence` is the explanation for the user (which budget, what is left, when it
    resets). `scope` ("user" or "total") and `period` ("day" or "month") name the
    window that refused; amounts are nano-dollars, `resets_at` epoch seconds. Not
    retryable: the same call is refused until `resets_at`.
    """

    def __init__(
        self,
        sentence: str,
        *,
        scope: str,
        period: str,
        cap_nano: int,
        remaining_nano: int,
        resets_at: float,
    ) -> None:
        self.sentence = sentence
        self.scope = scope
        self.period = period
        self.cap_nano = cap_nano
        self.remaining_nano = remaining_nano
        self.resets_at = resets_at
        super().__init__(sentence)


class BudgetUnavailable(BudgetError):
    """The budget could not be checked or recorded (Redis, a script, the ledger): refused.

    Unknown state is never waved through; the same call may work once the cause is gone.
    """

    retryable = True


class PlatformError(StockadeError):
    """A chat platform refused or failed a call; messages name no token or URL secret."""


class RateLimited(PlatformError):
    """The platform asked us to wait `retry_after_s` seconds (HTTP 429, Telegram's
    `retry_after`, Slack's `Retry-After`) before trying again."""

    retryable = True

    def __init__(self, retry_after_s: float, platform: str) -> None:
        self.retry_after_s = retry_after_s
        self.platform = platform
        super().__init__(f"{platform} asked to wait {retry_after_s:g} s")


class PlatformUnavailable(PlatformError):
    """No answer from the platform, or a server error: worth trying again later."""

    retryable = True
