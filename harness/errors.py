"""What a user's input, or a run that cannot go on, can cause: each error is printed by the command lines as one line
with its exit code (harness/command_line.run_command), never as a traceback.

    UsageError     a bad flag                                                          exit code 2
    DataError      a bad data file: '<file> line|row <n>: field '<name>' must ...'     exit code 2
    ModelError     a model, tokenizer or device that cannot be used, naming its flag   exit code 2
    RunError       an --out that cannot hold this run                                  exit code 2
    TrainingError  a run that cannot go on (divergence, a full disk)                   exit code 1
"""


class UsageError(ValueError):
    """A bad flag: reported as one line, exit code 2."""


class DataError(ValueError):
    """Bad input data; the message is one line: '<file> line|row <n>: field '<name>' must ..., got ...'."""


class ModelError(ValueError):
    """A model, tokenizer or device that cannot be used; one line naming the flag, printed by the front ends."""


class RunError(ValueError):
    """An --out that cannot hold this run; one line, printed by the command line."""


class TrainingError(RuntimeError):
    """A run that cannot go on (divergence, a full disk): one line, exit code 1, the last checkpoint intact."""


# Every error that is the user's input rather than a bug: a flag, a data file, a model directory, an --out. The
# command lines print it as one line and exit 2, without a traceback.
INPUT_ERRORS = (UsageError, DataError, ModelError, RunError)


def first_line(error):
    """An exception's message cut to its first line (library errors often run to a page)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
