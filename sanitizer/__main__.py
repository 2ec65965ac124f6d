"""`python -m sanitizer` and the `sanitizer` command.

The CLI is imported inside `main`: worker processes that the embedded cluster spawns re-import
the command's script, and need neither typer nor rich.
"""


def main() -> None:
    from sanitizer import interrupts

    interrupts.install()  # the one Ctrl-C handler, first: a press while importing is not lost
    try:
        try:
            from sanitizer.cli import main as cli_main
        except KeyboardInterrupt:  # Ctrl-C while the CLI is still being imported
            raise SystemExit(130) from None
        cli_main()
    finally:
        _forget_interrupted_exec()


def _forget_interrupted_exec() -> None:
    """Let the exit code stand, 130 after a Ctrl-C, under `python -m sanitizer` too.

    CPython remembers a KeyboardInterrupt that ended code run from a string (`exec("...")`,
    which libraries do while being imported: dataclasses, namedtuples), even when it was then
    caught; `python -m` then ends the process by SIGINT after the exit code was set. The
    console script is not affected. Each string `exec` starts by clearing that memory."""
    exec("pass")  # noqa: S102 - a constant string, for the side effect described above


if __name__ == "__main__":
    main()
