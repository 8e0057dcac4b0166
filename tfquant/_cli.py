"""Flag parsing shared by tfquant's command lines (`python -m tfquant.export`,
`python -m tfquant.models.train`, `python -m tfquant.models.baselines`): `--help` / `-h` print
the flags and their help, unknown flags fail with a message that names them.

Each command keeps its own private `absl.flags.FlagValues`, so importing one never touches
absl's global FLAGS.
"""

import sys

from absl import flags

#: The spellings that ask for help (absl's own `app.run` accepts these too).
HELP = ("-h", "-help", "--help", "--helpfull", "-?")


class HelpRequested(Exception):
    """Raised by `parse` after it printed the help: the command should exit with status 0.

    Example:
      >>> from absl import flags
      >>> try:
      ...     parse(flags.FlagValues(), ["--help"], "demo", "A demo.")
      ... except HelpRequested:
      ...     status = 0
      A demo.
      <BLANKLINE>
      Flags:
      <BLANKLINE>
      >>> status
      0
    """


def help_text(flag_values, description):
    """`description`, then every flag the command defined with its help and default.

    absl's own flags (--flagfile, --undefok) and the module headings it groups flags under
    are left out: the user asked about this command.
    """
    lines = flag_values.get_help(include_special_flags=False).splitlines()
    body = "\n".join(line for line in lines if line.startswith(" "))
    return f"{description.rstrip()}\n\nFlags:\n{body}\n"


def parse(flag_values, args, program, description):
    """Parses `args` (the arguments after the program name) into `flag_values`.

    Args:
      flag_values: the command's `absl.flags.FlagValues`, with its flags defined.
      args: the command-line arguments without the program name.
      program: how the user runs the command, e.g. "python -m tfquant.export" (for messages).
      description: what `--help` prints above the flags (usually the module docstring).

    Raises:
      HelpRequested: one of `HELP` came before any `--`; the help was printed to stdout.
      flags.Error: an unknown flag, a bad value or a positional argument; the message names
        it. Print it with `error`.

    Example:
      >>> from absl import flags
      >>> values = flags.FlagValues()
      >>> _ = flags.DEFINE_integer("runs", 5, "Timed runs.", flag_values=values)
      >>> parse(values, ["--runs=7"], "demo", "A demo.")
      >>> values.runs
      7
      >>> parse(values, ["--rusn=7"], "demo", "A demo.")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      absl.flags._exceptions.UnrecognizedFlagError: Unknown command line flag 'rusn'...
    """
    args = list(args)
    before_separator = args[: args.index("--")] if "--" in args else args
    if any(arg in HELP for arg in before_separator):
        print(help_text(flag_values, description), end="")
        raise HelpRequested()
    rest = flag_values([program, *args])
    if len(rest) > 1:
        raise flags.Error(f"unexpected arguments {rest[1:]}: every option is a --flag")


def error(program, message):
    """Prints `program: error: message` and where to find the flags to stderr; returns 2,
    the exit status for bad usage."""
    message = str(message).rstrip(". ")
    print(f"{program}: error: {message}. Run with --help for the flags.", file=sys.stderr)
    return 2
