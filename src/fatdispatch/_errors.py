"""fatdispatch's error hierarchy.

Everything the import path raises is an ``ImportError`` subclass, because that
is what code around ``import mypkg`` catches.  Messages say what happened and
what to do about it.  This module is loaded only when an error is raised or an
error class is named (``fatdispatch.NoUsableBuildError``): defining classes
costs time on the import path.
"""


class FatDispatchError(ImportError):
    """Base class of every error fatdispatch raises."""


class ManifestError(FatDispatchError, ValueError):
    """A manifest is missing, malformed, or from an incompatible schema.

    ``path`` names the manifest file and ``field`` the JSON path of the bad value.
    """

    def __init__(self, path: "str", field: "str", problem: "str") -> "None":
        self.field = field
        self.problem = problem
        where = f" (field {field})" if field else ""
        super().__init__(f"fatdispatch: bad manifest {path}{where}: {problem}", path=path)


class ConfigError(FatDispatchError, ValueError):
    """A ``FATDISPATCH_*`` environment variable has a value that cannot be used."""

    def __init__(self, variable: "str", value: "str", problem: "str") -> "None":
        self.variable = variable
        self.value = value
        super().__init__(f"fatdispatch: {variable}={value!r}: {problem}")


class NoUsableBuildError(FatDispatchError):
    """No build of a fat module could be loaded; ``attempts`` says why for each."""

    def __init__(self, message: "str", *, name: "str", attempts: "tuple[tuple[str, str], ...]" = ()) -> "None":
        self.attempts = attempts
        super().__init__(message, name=name)


class JSONError(ValueError):
    """The text is not one valid JSON document."""
