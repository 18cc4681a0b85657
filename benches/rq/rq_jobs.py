"""The trivial job RQ runs in benches/queue.py (the same work as the cloudx handler: none)."""


def noop(i):
    return None
