"""Every command line's contract (train.py, eval.py, toy_pareto.py and experiments/: pareto, frontier, bench,
world_build): bad input is one line naming the flag, file or field and exit code 2; a run that cannot go on is one
line and exit code 1; Ctrl-C or SIGTERM is one line saying what is left and exit code 130 or 143. Never a traceback.
"""
import argparse
import dataclasses
import json
import math
import signal
import sys

from cagrad import check_arguments
from harness.errors import INPUT_ERRORS, TrainingError, UsageError


THREADS_HELP = ("CPU threads for torch (0: torch's default, every core). 1 serves the embedded world's tiny model "
                "best, idle or busy; larger models on an idle CPU gain from more, on a shared one lose (docs/scale.md)")


def use_threads(threads, device=None):
    """--threads, where torch computes on the CPU."""
    import torch
    if threads > 0 and (device is None or device.type == "cpu"):
        torch.set_num_threads(threads)


SEED_LIMIT = 2 ** 63  # seeds are non-negative and below this (torch.manual_seed's range)
MIN_TEMPERATURE = 1e-4  # sampling temperatures at least this: logits / temperature must stay finite


def check_sampling(temperature, seeds, seed_flag="--seed"):
    """The sampling flags of eval.py, pareto.py and frontier.py."""
    if not MIN_TEMPERATURE <= temperature < math.inf:
        raise UsageError(f"--temperature: expected a finite number >= {MIN_TEMPERATURE:g}, got {temperature}")
    for seed in seeds:
        if not 0 <= seed < SEED_LIMIT:
            raise UsageError(f"{seed_flag}: expected integers in [0, 2**63), got {seed}")


def check_c(c):
    """--c (every command that has it), by cagrad's own check of its radius: one line naming the flag."""
    try:
        check_arguments([1.0], "lw", c)
    except ValueError:
        raise UsageError(f"--c: expected a value in [0, 1), got {c}") from None


def check_flags(values, checks):
    """checks: (attribute, holds) pairs over an argparse namespace or a config; the first that fails is one line
    naming its flag and value."""
    for name, holds in checks:
        if not holds:
            raise UsageError(f"--{name.replace('_', '-')}: invalid value {getattr(values, name)!r} (see --help)")


def check_positive(values, names):
    """Integer flags that must be at least 1 (None: not given, a default applies later)."""
    for name in names:
        value = getattr(values, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive integer, got {value}")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage block as well: bad input is one line here
        raise UsageError(message)


def parse_config(config_class, argv=None, description=None):
    """A dataclass of flags parsed the Hugging Face way (transformers.HfArgumentParser: a flag per field, --dash-name
    and --underscore_name alike, its help from the field's metadata, its default shown), with --no-NAME for every
    boolean and --config FILE: a JSON or YAML file of field values (an earlier run's run.json, say), which the flags
    given beside it override. Errors are one line."""
    from transformers import HfArgumentParser

    class Parser(OneLineParser, HfArgumentParser):
        pass

    parser = Parser(config_class, description=description)
    for action in parser._actions:  # the --dash-name first, as everywhere else in this project's messages
        action.option_strings.sort(key=lambda option: "_" in option)
    fields = dataclasses.fields(config_class)
    for field in fields:
        if field.type is bool:
            parser.add_argument(f"--no-{field.name.replace('_', '-')}", dest=field.name, action="store_false",
                                help=f"the opposite of --{field.name.replace('_', '-')}")
    parser.add_argument("--config", help="a JSON or YAML file of these flags' values (an earlier run's run.json, "
                                         "say); flags given beside it override it")
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_config_file(args.config, fields))
        args = parser.parse_args(argv)
    return config_class(**{field.name: getattr(args, field.name) for field in fields})


def read_config_file(path, fields):
    """{field: value} from a JSON or YAML file, each value of its field's type."""
    yaml_file = path.endswith((".yaml", ".yml"))
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--config: cannot read {path}: {getattr(error, 'strerror', None) or error}") from None
    if yaml_file:
        import yaml
        errors, parse = (yaml.YAMLError,), yaml.safe_load
    else:
        errors, parse = (ValueError,), json.loads
    try:
        values = parse(text)
    except errors as error:
        raise UsageError(f"--config: {path}: not valid {'YAML' if yaml_file else 'JSON'} "
                         f"({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UsageError(f"--config: {path}: expected a mapping of flag names to values")
    types = {field.name: field.type for field in fields}
    for key, value in values.items():
        kind = types.get(key)
        if kind is None:
            raise UsageError(f"--config: {path}: unknown field {key!r}")
        if not (type(value) is kind or kind is float and type(value) is int):
            raise UsageError(f"--config: {path}: field {key!r}: expected {kind.__name__}, got {value!r}")
    return values


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself), raised as Ctrl-C raises KeyboardInterrupt."""


def _terminate(signum, frame):
    raise Terminated


def run_command(main, *args, interrupted=lambda: "nothing was written"):
    """Run a command line's main: bad input is one line on stderr and exit code 2, a run that cannot go on one line
    and exit code 1, Ctrl-C or SIGTERM outside the training loop one line (`interrupted()` says what is left) and
    exit code 130 or 143; never a traceback."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return main(*args)
    except INPUT_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as error:
        print(f"\ninterrupted: {interrupted()}", file=sys.stderr)
        sys.exit(143 if isinstance(error, Terminated) else 130)
    finally:
        signal.signal(signal.SIGTERM, previous)
