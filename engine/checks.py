"""One helper for validating user-facing settings with errors that name the field and the rule."""


def check(ok: bool, name: str, value: object, rule: str) -> None:
    """Raise ValueError("<name> <rule>, got <value>") unless ok."""
    if not ok:
        raise ValueError(f"{name} {rule}, got {value!r}")
