"""Per-device payload images (NVS, partition tables, ...) built in memory."""


class PayloadError(ValueError):
    """A payload cannot be built or read; the message names the thing and the fix."""
