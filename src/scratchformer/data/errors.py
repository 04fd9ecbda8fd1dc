"""The one error type for data a person pointed us at."""


class DataError(ValueError):
    """Bad input data (missing, empty, undecodable, too short, wrong checksum...)."""
