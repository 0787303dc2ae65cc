"""The ``dhvc`` command's exit codes and the errors that carry them.

A ``CLIError(code, message)`` raised anywhere below the command line ends the command with ``code`` and the
message as one line on stderr; ``Interrupted`` is SIGINT or SIGTERM arriving during a run (128 + N).
"""
import signal


# Exit codes. 128 + N for signal N follows the shell's convention.
EXIT_OK = 0
EXIT_INTERNAL = 1      # a bug (Python's traceback) or a failed benchmark run
EXIT_USAGE = 2         # a bad option or configuration value (argparse uses 2 as well)
EXIT_NOT_FOUND = 3     # a data set, checkpoint, config file, run directory or benchmarks/ that is not there
EXIT_FORMAT = 4        # a file that cannot be read as what it should be (data, config, checkpoint)
EXIT_SHAPE = 5         # data of the wrong shape (rank, empty, labels not one per row)
EXIT_NONFINITE = 6     # NaN or inf in the data
EXIT_TOO_FEW = 7       # more clusters than samples
EXIT_NOT_WRITABLE = 8  # an output directory or file that cannot be written (or a full disk)
EXIT_MISMATCH = 9      # a checkpoint that does not fit the data or the run (another model shape)
EXIT_UNSAFE = 10       # a checkpoint refused by torch.load(weights_only=True): it pickles code or objects
EXIT_DIVERGED = 11     # training produced a non-finite loss
EXIT_EXISTS = 12       # --out already holds a run (continue it with --resume, or pass --overwrite)
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_CODES = {name: value for name, value in globals().items() if name.startswith("EXIT_")}


class CLIError(Exception):
    """A user error: ``message`` goes to stderr as one line and ``code`` becomes the exit status."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, " ".join(str(message).split())


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
