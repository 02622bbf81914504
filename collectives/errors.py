"""Exceptions raised by the collectives."""

__all__ = ["CollectiveMismatchError", "CollectiveTimeoutError"]


class CollectiveMismatchError(ValueError):
    """Ranks called one collective with arguments that do not agree.

    Raised on every rank of the communicator, with each rank's value in
    the message.
    """


class CollectiveTimeoutError(TimeoutError):
    """A peer did not take part in a collective within the timeout.

    ``operation`` names the collective, ``peers`` the ranks waited for and
    ``waited`` the seconds spent waiting.
    """

    def __init__(self, operation, peers, waited):
        self.operation = operation
        self.peers = tuple(peers)
        self.waited = waited
        ranks = ", ".join(str(p) for p in self.peers)
        super().__init__(f"{operation}: timed out after {waited:.1f} s "
                         f"waiting for rank(s) {ranks}")
