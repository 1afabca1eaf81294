"""The one failure of the model contract. Messages are one line: what, where, what to do."""


class ModelContractError(ValueError):
    """A model.json is missing, malformed, or names a weights file that is not there."""
