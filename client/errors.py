"""What the client raises: the failures a caller tells apart."""


class NoMasterReachable(Exception):
    """No master answered within the timeout."""


class RequestError(Exception):
    """The cluster refused the request as invalid, or it names something that does not exist."""

    def __init__(self, message: str, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class OutOfSpace(Exception):
    """etcd is out of space (its NOSPACE alarm): the cluster refused a change; try again later."""


class AccessDenied(Exception):
    """The cluster checks tokens and refused this call: no token or an unknown one
    (``unauthenticated``), or a role that does not allow it."""

    def __init__(self, message: str, unauthenticated: bool) -> None:
        super().__init__(message)
        self.unauthenticated = unauthenticated
