"""The application's own AWS errors: what the adapters raise, so that no module above them imports botocore or
compares error codes."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

# Any failure of an AWS call that survived the retry policy: for the few places that must catch them all (a
# best-effort look-ahead, a person's command line).
AWS_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError)


class RepositoryNotFoundError(LookupError):
    """ECR has no repository of that name (deleted, or mistyped in the parameters)."""

    def __init__(self, repository: str) -> None:
        super().__init__(f"repository {repository} does not exist")
        self.repository = repository


class CommandRefusedError(RuntimeError):
    """SSM refused a SendCommand for what it was asked (a 4xx other than throttling): nothing was sent, and the
    same request would be refused again. ``code`` is SSM's error code, for logs."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class InstanceNotAcceptedError(CommandRefusedError):
    """SSM does not accept an instance id the command names (agent not registered yet, deregistered, terminated):
    the whole command is refused."""
