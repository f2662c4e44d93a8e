"""How much one list-jobs or get-job call carries: shared by the masters, which enforce it, and
the clients, which page through the rest. Every page is built, encoded and sent in tens of
milliseconds, so the leader's loop is never held up and a client with a short timeout reads
any history."""

#: Jobs in a list-jobs page when the caller names no limit.
DEFAULT_LIST_LIMIT = 1000
#: The most jobs one list-jobs page holds.
MAX_LIST_LIMIT = 10_000
#: The most tasks one get-job page holds.
MAX_TASK_PAGE = 10_000
