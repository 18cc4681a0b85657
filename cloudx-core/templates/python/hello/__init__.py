"""A small package to start from."""


def greet(name: str) -> str:
    """Returns a greeting for `name`."""
    return f"Hello, {name}!"
